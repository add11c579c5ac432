"""What the agent counts as motion for the motion-without-detection rule: a local change, not a scene change."""

from __future__ import annotations

import numpy as np

from edge.agent import _local_change
from edge.gate import FrameGate, GateResult
from edge.policy.settings import GatePolicy
from edge.sources import Frame


def _frame(image: np.ndarray) -> Frame:
    return Frame(camera_id="cam0", seq=1, captured_at=0.0, image=image)


def test_an_object_moving_is_motion_and_a_light_change_is_not() -> None:
    rng = np.random.default_rng(0)
    scene = np.kron(rng.integers(40, 160, (30, 40, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    gate = FrameGate(GatePolicy())
    first = gate.check(scene)
    assert first.changed and not _local_change(first, _frame(scene))  # nothing to compare with yet
    with_object = scene.copy()
    with_object[100:140, 200:230] = 250
    moved = gate.check(with_object)
    assert moved.changed and _local_change(moved, _frame(with_object))
    brighter = np.clip(scene.astype(np.int16) + 60, 0, 255).astype(np.uint8)
    lit = gate.check(brighter)
    assert lit.changed and not _local_change(lit, _frame(brighter))


def test_no_box_is_no_motion() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    assert not _local_change(GateResult(changed=True, changed_fraction=0.5, changed_box=None), _frame(image))
