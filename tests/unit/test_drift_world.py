"""A drifting camera: from its drift second on the frames have the new look, the world in them is the same;
and the drift report's windows, scored on a real generated clip, give the figures the events imply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from common.detect import Detector, DetectorConfig
from sim.fleet.summary import CameraRun
from sim.harness.drift import rotated_classes
from sim.harness.drift_report import drift_figures, drift_section
from sim.harness.run import EDGE_MODEL
from sim.world.clips import ClipSpec, write_clip

FPS = 2.0
DRIFT_AT_S = 10.0


def _clip(folder: Path, drift: bool, to: str = "infrared", seconds: float = 20.0) -> Path:
    spec = ClipSpec(
        seed=4,
        camera=1,
        seconds=seconds,
        fps=FPS,
        mean_gap_seconds=1.5,
        quiet_start_seconds=0.5,
        drift_at_s=DRIFT_AT_S if drift else None,
        drift_to=to,  # type: ignore[arg-type]
    )
    return write_clip(spec, folder)


def _frame(clip: Path, index: int) -> np.ndarray:
    image = cv2.imread(str(clip / "frames" / f"{index:06d}.jpg"))
    assert image is not None
    return image


def _colour(image: np.ndarray) -> float:
    """Mean spread between the channels once the sensor noise is blurred away."""
    smooth = cv2.GaussianBlur(image, (0, 0), 5).astype(np.float32)
    return float((smooth.max(axis=2) - smooth.min(axis=2)).mean())


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drift-world")
    return {
        "steady": _clip(root / "steady", drift=False),
        "infrared": _clip(root / "infrared", drift=True),
        "night": _clip(root / "night", drift=True, to="night"),
    }


@pytest.mark.parametrize("look", ["infrared", "night"])
def test_a_drifting_clip_keeps_its_ground_truth_and_its_frames_before_the_drift(
    clips: dict[str, Path], look: str
) -> None:
    steady, drifted = clips["steady"], clips[look]
    assert (drifted / "gt.jsonl").read_text() == (steady / "gt.jsonl").read_text()
    assert (drifted / "events.json").read_text() == (steady / "events.json").read_text()
    first = round(DRIFT_AT_S * FPS)
    for index in range(first):
        same = (drifted / "frames" / f"{index:06d}.jpg").read_bytes()
        assert same == (steady / "frames" / f"{index:06d}.jpg").read_bytes(), index
    assert json.loads((drifted / "clip.json").read_text())["drift"] == {"at_s": DRIFT_AT_S, "frame": first, "to": look}


def test_frames_after_the_drift_have_the_infrared_look(clips: dict[str, Path]) -> None:
    steady, drifted = clips["steady"], clips["infrared"]
    frames = len(list((steady / "frames").glob("*.jpg")))
    for index in range(round(DRIFT_AT_S * FPS), frames):
        day, infrared = _frame(steady, index), _frame(drifted, index)
        assert infrared.mean() < 0.6 * day.mean(), index
        assert _colour(infrared) < 0.3 * _colour(day), index


def test_frames_after_the_drift_to_night_have_a_darker_background(clips: dict[str, Path]) -> None:
    steady, drifted = clips["steady"], clips["night"]
    last = len(list((steady / "frames").glob("*.jpg"))) - 1
    assert _frame(drifted, last).mean() < 0.6 * _frame(steady, last).mean()


def _event(
    camera: str, track: int, label: str, frame: int, box: list[float], verdict: str | None, source: str = "cloud"
) -> dict[str, Any]:
    return {
        "source": source,
        "schema": 1,
        "type": "new",
        "id": f"gw-0/{camera}/{track}",
        "camera": camera,
        "label": label,
        "box": box,
        "frame_seq": frame,
        "verdict": verdict,
    }


def test_drift_windows_score_each_stretch_of_a_real_clip(tmp_path: Path) -> None:
    """Events that report every object first seen before the drift (the edge sure on its own) and after the
    model switch (confirmed by the cloud), none in between, and a false alarm after the switch."""
    clip = _clip(tmp_path / "world" / "gw-0" / "cam0", drift=True, seconds=30.0)
    switch_s = 20.0
    truth = [json.loads(line) for line in (clip / "gt.jsonl").read_text().splitlines()]
    first_seen: dict[int, tuple[int, dict[str, Any]]] = {}
    for record in truth:
        for obj in record["objects"]:
            first_seen.setdefault(obj["track"], (record["frame"], obj))
    # Before the drift the edge was sure on its own; after the switch the cloud confirmed what it asked.
    events = [
        _event("cam0", track, obj["label"], frame, obj["box"], None, "edge" if frame < DRIFT_AT_S * FPS else "cloud")
        for track, (frame, obj) in first_seen.items()
        if frame < DRIFT_AT_S * FPS or frame >= switch_s * FPS
    ]
    events.append(_event("cam0", 999, "rocket", 45, [600.0, 0.0, 639.0, 20.0], None))  # nothing is there
    events.append(_event("cam0", 998, "cat", 46, [0.0, 0.0, 5.0, 5.0], "rejected"))  # withdrawn: not counted
    mode = tmp_path / "modes" / "edgeglm"
    (mode / "edges" / "gw-0").mkdir(parents=True)
    (mode / "edges" / "gw-0" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    # The agent played one frame per poll second... at half speed: clip second s is wall second 2 s.
    polls = [
        {"t": 2.0 * s, "frames": {"gw-0/cam0": int(s * FPS)}, "models": {"gw-0": "ft-1" if s >= switch_s else "w-1"}}
        for s in range(0, 31)
    ]
    series = [100] * 70  # 100 bytes each wall second, 10 s of drain after the last frame
    figures = drift_figures([CameraRun("gw-0", "cam0", clip)], mode, {"gw-0": {"up_series_bytes": series}}, polls)

    rows = figures["gw-0/cam0"]
    assert [(r["window"], r["from_s"], r["to_s"], r["model"]) for r in rows] == [
        ("before the drift", 0.0, 10.0, "w-1"),
        ("after the drift", 10.0, 20.0, "w-1"),
        ("infrared, model ft-1", 20.0, 30.0, "ft-1"),
    ]
    expected_objects = [
        sum(lo * FPS <= frame < hi * FPS for frame, _ in first_seen.values())
        for lo, hi in ((0, 10), (10, 20), (20, 30))
    ]
    assert [r["objects"] for r in rows] == expected_objects
    assert all(count > 0 for count in expected_objects)
    assert [r["recall"] for r in rows] == [1.0, 0.0, 1.0]
    assert [r["edge_recall"] for r in rows] == [1.0, 0.0, 0.0]
    assert rows[1]["tracks"] == 0 and rows[1]["precision"] is None
    last = expected_objects[2]
    assert rows[2]["tracks"] == last + 1 and rows[2]["precision"] == round(last / (last + 1), 3)
    assert [r["uplink_bytes"] for r in rows] == [2000, 2000, 3000]
    assert sum(r["uplink_bytes"] for r in rows) == sum(series)
    table = "\n".join(drift_section("edgeglm", figures, None))
    assert "| gw-0/cam0 | after the drift | 10–20 | w-1 |" in table


def test_the_bad_candidate_names_every_class_as_another(tmp_path: Path) -> None:
    running = Detector(DetectorConfig(model_path=EDGE_MODEL)).names
    bad = Detector(DetectorConfig(model_path=rotated_classes(EDGE_MODEL, tmp_path / "bad.onnx"))).names
    assert sorted(bad.values()) == sorted(running.values())
    assert all(bad[index] != running[index] for index in running)
