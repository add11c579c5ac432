"""The frame gate on rendered camera clips: quiet stretches are skipped, crossings are not."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.gate import FrameGate
from edge.policy.settings import GatePolicy
from sim.world.clips import ClipSpec, write_clip

# 10 s at 5 fps. Objects are scheduled from quiet_start_seconds on, so the first 2 s are empty.
QUIET_FRAMES = 10


def busy_clip(small_fraction: float) -> ClipSpec:
    """10 s at 5 fps, objects arriving about every second after a 2 s quiet start."""
    return ClipSpec(
        seed=4, seconds=10, fps=5, quiet_start_seconds=2, mean_gap_seconds=1.0, small_fraction=small_fraction
    )


def load(folder: Path) -> tuple[list[np.ndarray], list[int]]:
    """The clip's frames and, per frame, how many labelled objects are in view."""
    lines = (folder / "gt.jsonl").read_text().splitlines()
    frames = [np.asarray(cv2.imread(str(folder / "frames" / f"{i:06d}.jpg")), np.uint8) for i in range(len(lines))]
    return frames, [len(json.loads(line)["objects"]) for line in lines]


def gate_clip(frames: list[np.ndarray], policy: GatePolicy) -> list[bool]:
    gate = FrameGate(policy)
    return [gate.check(frame).changed for frame in frames]


@pytest.fixture(scope="module", params=[False, True], ids=["day", "night"])
def static_clip(request, tmp_path_factory):
    """A camera on which nothing crosses: only sensor noise and slow light drift."""
    spec = ClipSpec(seed=1, seconds=10, fps=5, mean_gap_seconds=1e9, night=request.param)
    return load(write_clip(spec, tmp_path_factory.mktemp("static")))


@pytest.fixture(scope="module")
def crossing_clip(tmp_path_factory):
    """Objects of ordinary size crossing after a quiet start."""
    spec = busy_clip(small_fraction=0.0)
    return load(write_clip(spec, tmp_path_factory.mktemp("crossing")))


@pytest.fixture(scope="module")
def small_object_clip(tmp_path_factory):
    """A small, distant motorcycle (about 25x15 px of 640x480) crossing, then a small person."""
    spec = busy_clip(small_fraction=1.0)
    return load(write_clip(spec, tmp_path_factory.mktemp("small")))


def test_a_static_noisy_scene_is_gated_after_the_first_frame(static_clip):
    frames, objects = static_clip
    assert sum(objects) == 0
    changed = gate_clip(frames, GatePolicy())
    assert changed[0]
    assert sum(changed[1:]) == 0


def test_frames_with_an_object_crossing_are_changed_and_the_quiet_start_is_not(crossing_clip):
    frames, objects = crossing_clip
    changed = gate_clip(frames, GatePolicy())
    with_object = [c for c, n in zip(changed, objects, strict=True) if n > 0]
    assert len(with_object) >= 20
    assert sum(with_object) >= 0.9 * len(with_object)
    assert not any(changed[1:QUIET_FRAMES])


def test_a_very_high_pixel_threshold_gates_the_crossings_too(crossing_clip):
    frames, _ = crossing_clip
    changed = gate_clip(frames, GatePolicy(pixel_diff_threshold=255))
    assert sum(changed) == 1  # the first frame only


def test_a_lower_area_fraction_catches_small_objects(small_object_clip):
    frames, objects = small_object_clip
    default = gate_clip(frames, GatePolicy(changed_area_fraction=0.002))
    sensitive = gate_clip(frames, GatePolicy(changed_area_fraction=0.0003))
    in_view = [i for i, n in enumerate(objects) if n > 0]
    caught_default = sum(default[i] for i in in_view)
    caught_sensitive = sum(sensitive[i] for i in in_view)
    assert caught_sensitive >= 0.8 * len(in_view)
    assert caught_sensitive > caught_default
    assert not any(sensitive[1:QUIET_FRAMES])
