"""The YOLO-format image dataset: train/val/test splits, data.yaml and per-image metadata.

Each image is drawn from its own generator seeded by (seed, split, index), so any image can be
regenerated alone and the files are identical from one run to the next.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sim.world.compose import Scene, render_scene, yolo_label_lines
from sim.world.photos import CLASSES

SPLITS: tuple[str, ...] = ("train", "val", "test")
SAVE_JPEG_QUALITY = 92


@dataclass(frozen=True)
class DatasetSpec:
    """How many images per split, their size and the seed."""

    seed: int = 0
    train: int = 800
    val: int = 200
    test: int = 200
    width: int = 640
    height: int = 480

    def count(self, split: str) -> int:
        """Number of images in `split`."""
        return int(getattr(self, split))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one image; independent of every other image."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def render_dataset_image(spec: DatasetSpec, split: str, index: int) -> Scene:
    """Render image `index` of `split` exactly as the dataset writer does."""
    return render_scene(scene_rng(spec.seed, split, index), spec.width, spec.height)


def write_dataset(
    spec: DatasetSpec,
    out: Path,
    progress: Callable[[int], None] | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, int]:
    """Write images/, labels/, meta/ and data.yaml under `out`; returns images written per split."""
    written: dict[str, int] = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        image_dir = out / "images" / split
        label_dir = out / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        (out / "meta").mkdir(parents=True, exist_ok=True)
        meta_lines = []
        for index in range(spec.count(split)):
            scene = render_dataset_image(spec, split, index)
            stem = f"{split}_{index:05d}"
            ok, buf = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, SAVE_JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"{image_dir / stem}.jpg: OpenCV could not encode the image")
            (image_dir / f"{stem}.jpg").write_bytes(buf.tobytes())
            lines = yolo_label_lines(scene.objects, spec.width, spec.height)
            (label_dir / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
            meta_lines.append(json.dumps(scene_metadata(stem, scene), sort_keys=True))
            if progress is not None:
                progress(1)
        (out / "meta" / f"{split}.jsonl").write_text("".join(line + "\n" for line in meta_lines))
        written[split] = spec.count(split)
    (out / "data.yaml").write_text(data_yaml(spec))
    return written


def scene_metadata(stem: str, scene: Scene) -> dict[str, object]:
    """What the labels do not say: which cases are hard, and why."""
    return {
        "image": stem,
        "hard": scene.hard,
        "conditions": scene.conditions.tags(),
        "distractors": scene.distractors,
        "objects": [
            {
                "label": obj.label,
                "box": [round(v, 2) for v in obj.box],
                "small": obj.small,
                "occluded": obj.occluded,
            }
            for obj in scene.objects
        ],
    }


def data_yaml(spec: DatasetSpec) -> str:
    """The ultralytics dataset file.

    No `path:` key: ultralytics then resolves the splits against the yaml's own folder, so the file
    is the same wherever the dataset is written.
    """
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    return (
        f"# EdgeGLM world, seed {spec.seed}, {spec.width}x{spec.height}\n"
        "train: images/train\nval: images/val\ntest: images/test\n"
        f"names:\n{names}"
    )


def read_metadata(dataset: Path, split: str) -> list[dict[str, object]]:
    """The per-image metadata of one split, in file order."""
    path = dataset / "meta" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
