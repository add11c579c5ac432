"""The world generator: deterministic, labelled, and full of the cases that make an edge model unsure."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sim.cli import app
from sim.world.clips import ClipSpec, write_clip
from sim.world.compose import render_scene
from sim.world.dataset import DatasetSpec, render_dataset_image, scene_rng
from sim.world.photos import CLASSES

runner = CliRunner()


def world_args(out: Path, seed: int) -> list[str]:
    return [
        "world",
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--train",
        "6",
        "--val",
        "2",
        "--test",
        "3",
        "--clips",
        "1",
        "--clip-seconds",
        "6",
        "--fps",
        "5",
    ]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_world(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert runner.invoke(app, world_args(first, 7)).exit_code == 0
    assert runner.invoke(app, world_args(second, 7)).exit_code == 0
    a, b = tree(first), tree(second)
    assert a.keys() == b.keys()
    assert len([k for k in a if k.startswith("labels/")]) == 11
    assert a == b


def test_other_seed_writes_other_images(tmp_path: Path) -> None:
    assert runner.invoke(app, world_args(tmp_path / "a", 7)).exit_code == 0
    assert runner.invoke(app, world_args(tmp_path / "b", 8)).exit_code == 0
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a["images/train/train_00000.jpg"] != b["images/train/train_00000.jpg"]


def test_yolo_labels_are_normalised_and_match_metadata(tmp_path: Path) -> None:
    assert runner.invoke(app, world_args(tmp_path, 3)).exit_code == 0
    meta = {m["image"]: m for m in map(json.loads, (tmp_path / "meta" / "train.jsonl").read_text().splitlines())}
    for label_file in (tmp_path / "labels" / "train").glob("*.txt"):
        rows = [line.split() for line in label_file.read_text().splitlines()]
        objects = meta[label_file.stem]["objects"]
        assert len(rows) == len(objects)
        for row, obj in zip(rows, objects, strict=True):
            assert CLASSES[int(row[0])] == obj["label"]
            cx, cy, w, h = map(float, row[1:])
            assert 0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1
            x1, _, x2, _ = obj["box"]
            assert cx * 640 == pytest.approx((x1 + x2) / 2, abs=0.02)
    assert "names:" in (tmp_path / "data.yaml").read_text()


def test_every_hard_case_occurs_in_a_hundred_scenes() -> None:
    spec = DatasetSpec(seed=0)
    conditions: Counter[str] = Counter()
    objects: Counter[str] = Counter()
    empty = distractors = 0
    for index in range(100):
        scene = render_dataset_image(spec, "train", index)
        assert scene.image.shape == (480, 640, 3)
        conditions.update(scene.conditions.tags())
        objects.update(obj.label for obj in scene.objects)
        objects.update("small" for obj in scene.objects if obj.small)
        objects.update("occluded" for obj in scene.objects if obj.occluded)
        empty += not scene.objects
        distractors += scene.distractors > 0
    assert set(conditions) == {"dark", "blur", "noise", "jpeg"}
    assert all(objects[name] >= 5 for name in CLASSES)
    assert objects["small"] >= 10 and objects["occluded"] >= 5
    assert empty >= 2 and distractors >= 20


def test_small_objects_are_small_and_boxes_stay_in_frame() -> None:
    for index in range(40):
        scene = render_scene(scene_rng(1, "val", index))
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
            if obj.small:
                assert y2 - y1 <= 36


@pytest.mark.slow
def test_clip_has_quiet_stretches_moving_objects_and_consistent_events(tmp_path: Path) -> None:
    spec = ClipSpec(seed=5, camera=0, seconds=60, fps=5)
    write_clip(spec, tmp_path)
    frames = [json.loads(line) for line in (tmp_path / "gt.jsonl").read_text().splitlines()]
    events = json.loads((tmp_path / "events.json").read_text())
    assert len(frames) == 300 == len(list((tmp_path / "frames").glob("*.jpg")))
    quiet = [f for f in frames if not f["objects"]]
    assert len(quiet) >= 60, "real cameras mostly see nothing happen"
    assert not frames[0]["objects"]
    assert events, "a minute of camera should see something"
    for event in events:
        in_view = [f["frame"] for f in frames if any(o["track"] == event["track"] for o in f["objects"])]
        assert in_view[0] == event["start_frame"] and in_view[-1] == event["end_frame"]
        assert event["watched"] == (event["label"] in ("person", "motorcycle"))
    moving = [e for e in events if e["end_frame"] - e["start_frame"] >= 2]
    track = moving[0]["track"]
    boxes = [o["box"] for f in frames for o in f["objects"] if o["track"] == track]
    assert boxes[0] != boxes[-1], "objects move across the view"


def test_quiet_frames_still_differ_by_sensor_noise(tmp_path: Path) -> None:
    import cv2

    write_clip(ClipSpec(seed=2, seconds=2, fps=5, quiet_start_seconds=10), tmp_path)
    a = np.asarray(cv2.imread(str(tmp_path / "frames" / "000000.jpg")), dtype=np.int16)
    b = np.asarray(cv2.imread(str(tmp_path / "frames" / "000001.jpg")), dtype=np.int16)
    diff = np.abs(a - b)
    assert 0 < diff.mean() < 6
