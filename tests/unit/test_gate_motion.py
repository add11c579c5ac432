"""What the gate reports as motion (for the motion-without-detection rule): a local change, not a scene change."""

from __future__ import annotations

import numpy as np

from edge.gate import FrameGate
from edge.policy.settings import GatePolicy


def test_an_object_moving_is_motion_and_a_light_change_is_not() -> None:
    rng = np.random.default_rng(0)
    scene = np.kron(rng.integers(40, 160, (30, 40, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    gate = FrameGate(GatePolicy())
    first = gate.check(scene)
    assert first.changed and not first.motion  # nothing to compare with yet
    with_object = scene.copy()
    with_object[100:140, 200:230] = 250
    moved = gate.check(with_object)
    assert moved.changed and moved.motion
    brighter = np.clip(scene.astype(np.int16) + 60, 0, 255).astype(np.uint8)
    lit = gate.check(brighter)
    assert lit.changed and not lit.motion
