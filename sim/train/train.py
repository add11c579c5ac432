"""Train the world's YOLO detectors from scratch with ultralytics and export them to ONNX.

Runs only in the training virtualenv (`make train` builds `.venv-train`): ultralytics and its
torch/torchvision never enter the runtime or test environments. Offline by construction: the
environment variables below are set before ultralytics is imported, models are built from yaml with
`pretrained=False`, and the font ultralytics' dataset checks want is copied from matplotlib.

Outputs, in --out (default sim/models):
  edge.onnx, reference.onnx             the exported detectors
  train-results.json                    wall times, epochs, ultralytics' own test-split metrics
and in tests/fixtures/ultralytics_edge/ the ultralytics predictions used to test our decoder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sim.world.dataset import DatasetSpec, write_dataset
from sim.world.photos import CLASSES

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO / "tests" / "fixtures" / "ultralytics_edge"
FIXTURE_IMAGES = 20


@dataclass(frozen=True)
class Recipe:
    """One detector: architecture scale, input size, epochs."""

    name: str
    depth: float
    width: float
    imgsz: int
    epochs: int
    batch: int
    dynamic_batch: bool


EDGE = Recipe("edge", depth=0.33, width=0.125, imgsz=320, epochs=30, batch=16, dynamic_batch=True)
# The reference runs in the cloud behind a dynamic batcher: its batch axis must be dynamic too. It is the
# sim's cloud judge, which must be clearly stronger than the edge (as a cloud model is in the field):
# at 15 epochs it reached mAP50 0.809 with its losses still falling; 35 epochs (~2 h on 2 cores)
# is what this CPU can give it. A cut run goes on with `--only reference --resume`.
REFERENCE = Recipe("reference", depth=0.33, width=0.25, imgsz=640, epochs=35, batch=16, dynamic_batch=True)


def offline_environment(config_dir: Path) -> None:
    """Keep ultralytics off the network and out of $HOME; must run before it is imported."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    font_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    if not (font_dir / "Arial.ttf").exists():
        import matplotlib

        dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        shutil.copyfile(dejavu, font_dir / "Arial.ttf")


def model_yaml(recipe: Recipe, run_dir: Path) -> Path:
    """ultralytics' own yolov8 architecture, with our class count and one custom scale."""
    import ultralytics
    import yaml

    base = Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml"
    spec = yaml.safe_load(base.read_text())
    spec["nc"] = len(CLASSES)
    spec["scales"] = {"e": [recipe.depth, recipe.width, 1024]}
    spec["scale"] = "e"
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / f"{recipe.name}-yolov8.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def train_one(
    recipe: Recipe, data_yaml: Path, run_dir: Path, out_dir: Path, seed: int, resume: bool = False
) -> dict[str, Any]:
    """Train (or go on with a cut run), validate on the test split with ultralytics, export ONNX."""
    from ultralytics import YOLO

    weights = run_dir / recipe.name / "weights" / "last.pt"
    started = time.monotonic()
    if resume:
        if not weights.exists():
            raise SystemExit(f"--resume: no cut run to go on with ({weights} does not exist)")
        model = YOLO(str(weights), task="detect")
        params = sum(p.numel() for p in model.model.parameters())
        model.train(resume=True)
    else:
        model = YOLO(str(model_yaml(recipe, run_dir)), task="detect")
        params = sum(p.numel() for p in model.model.parameters())
        model.train(
            data=str(data_yaml),
            epochs=recipe.epochs,
            imgsz=recipe.imgsz,
            batch=recipe.batch,
            device="cpu",
            workers=0,
            seed=seed,
            deterministic=True,
            pretrained=False,
            amp=False,
            plots=False,
            val=False,
            project=str(run_dir),
            name=recipe.name,
            exist_ok=True,
            verbose=False,
        )
    train_seconds = time.monotonic() - started
    trained = YOLO(str(weights), task="detect")
    metrics = trained.val(
        data=str(data_yaml),
        split="test",
        imgsz=recipe.imgsz,
        batch=16,
        device="cpu",
        plots=False,
        verbose=False,
    )
    per_class = {
        CLASSES[int(c)]: {"map50": float(metrics.box.ap50[i]), "map50_95": float(metrics.box.ap[i])}
        for i, c in enumerate(metrics.box.ap_class_index)
    }
    target = export(recipe, weights, out_dir)
    return {
        "recipe": asdict(recipe),
        "parameters": int(params),
        "train_seconds": round(train_seconds, 1),
        "resumed": resume,
        "onnx": target.name,
        "onnx_bytes": target.stat().st_size,
        "ultralytics_test": {
            "map50": float(metrics.box.map50),
            "map50_95": float(metrics.box.map),
            "per_class": per_class,
        },
    }


def export(recipe: Recipe, weights: Path, out_dir: Path) -> Path:
    """ONNX export of trained weights into out_dir/<name>.onnx (batch axis dynamic when the recipe says)."""
    from ultralytics import YOLO

    exported = YOLO(str(weights), task="detect").export(
        format="onnx", imgsz=recipe.imgsz, opset=17, simplify=True, dynamic=recipe.dynamic_batch, device="cpu"
    )
    target = out_dir / f"{recipe.name}.onnx"
    shutil.copyfile(exported, target)
    if recipe.dynamic_batch:
        fix_spatial_dims(target, recipe.imgsz)
    return target


def fix_spatial_dims(path: Path, imgsz: int) -> None:
    """Keep only the batch axis dynamic.

    ultralytics' `dynamic=True` frees batch, height and width together; the edge runtime letterboxes
    to one square size, and ONNX Runtime plans better with fixed spatial dims.
    """
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = imgsz
    dims[3].dim_value = imgsz
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    anchors = sum((imgsz // stride) ** 2 for stride in (8, 16, 32))
    out_dims[2].dim_value = anchors
    for entry in model.metadata_props:
        if entry.key == "imgsz":
            entry.value = str([imgsz, imgsz])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def record_fixture(model_path: Path, dataset: Path, imgsz: int) -> None:
    """ultralytics' own predictions from the exported ONNX: the reference our decoder is tested against."""
    from ultralytics import YOLO

    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    images = sorted((dataset / "images" / "test").glob("*.jpg"))[:FIXTURE_IMAGES]
    model = YOLO(str(model_path), task="detect")
    records = []
    for image in images:
        shutil.copyfile(image, FIXTURE_DIR / image.name)
        result = model.predict(str(image), imgsz=imgsz, conf=0.25, iou=0.7, rect=False, device="cpu", verbose=False)[0]
        boxes = result.boxes
        records.append(
            {
                "image": image.name,
                "detections": [
                    {
                        "class_id": int(cls),
                        "label": CLASSES[int(cls)],
                        "score": round(float(score), 5),
                        "box": [round(float(v), 2) for v in xyxy],
                    }
                    for xyxy, score, cls in zip(
                        boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
                    )
                ],
            }
        )
    import ultralytics

    payload = {
        "model": model_path.name,
        "imgsz": imgsz,
        "conf": 0.25,
        "iou": 0.7,
        "ultralytics": ultralytics.__version__,
        "images": records,
    }
    (FIXTURE_DIR / "predictions.json").write_text(json.dumps(payload, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `make train`."""
    parser = argparse.ArgumentParser(description="Train the EdgeGLM world detectors (ultralytics, CPU, offline).")
    parser.add_argument("--out", type=Path, default=REPO / "sim" / "models", help="where the ONNX files go")
    parser.add_argument("--data", type=Path, default=REPO / ".cache" / "world-train", help="dataset folder")
    parser.add_argument("--seed", type=int, default=0, help="world generator and training seed")
    parser.add_argument("--only", choices=["edge", "reference"], help="train one model only")
    parser.add_argument("--export-only", action="store_true", help="re-export the last trained weights, no training")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with the cut run in runs/<name> (ultralytics' resume) instead of starting over",
    )
    args = parser.parse_args(argv)

    offline_environment(REPO / ".yolo")
    import torch
    import ultralytics
    from ultralytics.utils import torch_utils

    # ultralytics uses cores-1 threads on CPU (1 here); two threads cut an epoch by a third.
    torch_utils.NUM_THREADS = max(1, os.cpu_count() or 1)

    if args.export_only:
        for recipe in (EDGE, REFERENCE):
            if not args.only or recipe.name == args.only:
                print(f"exported {export(recipe, REPO / 'runs' / recipe.name / 'weights' / 'last.pt', args.out)}")
        return 0
    spec = DatasetSpec(seed=args.seed)
    if not (args.data / "data.yaml").exists():
        print(f"generating the world dataset (seed {spec.seed}) into {args.data}", flush=True)
        write_dataset(spec, args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = REPO / "runs"
    results_path = args.out / "train-results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["environment"] = {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch_utils.NUM_THREADS,
        "machine": platform.machine(),
    }
    results["dataset"] = asdict(spec)
    for recipe in (EDGE, REFERENCE):
        if args.only and recipe.name != args.only:
            continue
        print(f"training {recipe.name}: {recipe}", flush=True)
        results[recipe.name] = train_one(recipe, args.data / "data.yaml", run_dir, args.out, args.seed, args.resume)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        if recipe is EDGE:
            record_fixture(args.out / "edge.onnx", args.data, recipe.imgsz)
    return 0


if __name__ == "__main__":
    sys.exit(main())
