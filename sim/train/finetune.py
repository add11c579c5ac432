"""Fine-tune trained edge weights with ultralytics, and export the result as `sim.train.train` does.

The ultralytics half of `edgeglm-cloud train-edge` (cloud/retrain), run by it as a child process
with the training environment's Python (`.venv-train`): the cloud package never imports ultralytics
(its image installs none), and the edge runtime the evaluation uses (simplejpeg, ONNX Runtime) need
not be in the training environment. Offline as `sim.train.train` is: `offline_environment` runs
before ultralytics is imported.

  python -m sim.train.finetune tune --weights W.pt --data data.yaml --out DIR ...   DIR/candidate.onnx
  python -m sim.train.finetune base-weights --out sim/models/edge.pt

`base-weights` reproduces the edge model's starting weights with the seeded recipe of `make train`
(`sim.train.train.EDGE`, seed 0, the world's training split).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sim.train.train import EDGE, REPO, Recipe, export, offline_environment, train_one

RESULT_FILE = "tune-result.json"  # what `tune` leaves for its caller: the weights, the ONNX, wall times


def _threads() -> None:
    """ultralytics uses cores-1 threads on CPU (1 here); two threads cut an epoch by a third."""
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = max(1, os.cpu_count() or 1)


def fine_tune(
    weights: Path,
    data_yaml: Path,
    run_dir: Path,
    *,
    epochs: int,
    imgsz: int,
    batch: int,
    lr0: float,
    seed: int,
) -> Path:
    """Train `weights` further on `data_yaml`; returns the last epoch's weights (EMA, optimizer stripped)."""
    offline_environment(REPO / ".yolo")
    from ultralytics import YOLO

    _threads()
    model = YOLO(str(weights), task="detect")
    model.train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device="cpu",
        workers=0,
        seed=seed,
        deterministic=True,
        amp=False,
        plots=False,
        val=False,
        # A fixed, low learning rate and no warm-up: "auto" would pick its own rate, and warm-up's
        # high bias rate would undo what the weights know before the fine-tune could adapt them.
        optimizer="AdamW",
        lr0=lr0,
        warmup_epochs=0,
        project=str(run_dir),
        name="candidate",
        exist_ok=True,
        verbose=False,
    )
    return run_dir / "candidate" / "weights" / "last.pt"


def export_candidate(weights: Path, out_dir: Path, imgsz: int) -> Path:
    """ONNX export of fine-tuned weights into out_dir/candidate.onnx, as `make train` exports edge.onnx."""
    offline_environment(REPO / ".yolo")
    recipe: Recipe = dataclasses.replace(EDGE, name="candidate", imgsz=imgsz)
    out_dir.mkdir(parents=True, exist_ok=True)
    return export(recipe, weights, out_dir)


def base_weights(data_yaml: Path, out: Path, seed: int = 0) -> float:
    """Train the edge recipe from scratch (as `make train` does) and keep its weights at `out`; returns
    the training wall time in seconds."""
    offline_environment(REPO / ".yolo")
    _threads()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-weights-") as scratch:
        run_dir = Path(scratch)
        train_one(EDGE, data_yaml, run_dir / "runs", run_dir, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "runs" / EDGE.name / "weights" / "last.pt", out)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    """`tune`: fine-tune and export (what `edgeglm-cloud train-edge` runs); `base-weights`: reproduce edge.pt."""
    parser = argparse.ArgumentParser(description="Fine-tune or reproduce the edge model (ultralytics, CPU, offline).")
    commands = parser.add_subparsers(dest="command", required=True)
    tune = commands.add_parser("tune", help="fine-tune weights on a dataset and export candidate.onnx")
    tune.add_argument("--weights", type=Path, required=True, help="starting weights (.pt)")
    tune.add_argument("--data", type=Path, required=True, help="the dataset's data.yaml")
    tune.add_argument("--out", type=Path, required=True, help="folder for runs/ and candidate.onnx")
    tune.add_argument("--epochs", type=int, required=True, help="epochs")
    tune.add_argument("--imgsz", type=int, required=True, help="input side")
    tune.add_argument("--batch", type=int, required=True, help="images per step")
    tune.add_argument("--lr0", type=float, required=True, help="learning rate")
    tune.add_argument("--seed", type=int, default=0, help="training seed")
    base = commands.add_parser("base-weights", help="train the edge recipe from scratch, keep its .pt")
    base.add_argument("--out", type=Path, required=True, help="where the .pt goes")
    base.add_argument("--data", type=Path, default=REPO / ".cache" / "world-train", help="world dataset folder")
    base.add_argument("--seed", type=int, default=0, help="world generator and training seed")
    args = parser.parse_args(argv)
    if args.command == "tune":
        started = time.monotonic()
        trained = fine_tune(
            args.weights,
            args.data,
            args.out / "runs",
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            lr0=args.lr0,
            seed=args.seed,
        )
        tuned = time.monotonic()
        onnx = export_candidate(trained, args.out, args.imgsz)
        result = {
            "weights": str(trained),
            "onnx": str(onnx),
            "fine_tune_s": round(tuned - started, 1),
            "export_s": round(time.monotonic() - tuned, 1),
        }
        (args.out / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if not (args.data / "data.yaml").exists():
        from sim.world.dataset import DatasetSpec, write_dataset

        print(f"generating the world dataset (seed {args.seed}) into {args.data}", flush=True)
        write_dataset(DatasetSpec(seed=args.seed), args.data)
    seconds = base_weights(args.data / "data.yaml", args.out, args.seed)
    print(f"{args.out}: {args.out.stat().st_size} bytes, trained in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
