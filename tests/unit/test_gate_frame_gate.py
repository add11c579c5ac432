"""The frame gate on synthetic frames: what counts as change, and how the policy steers it."""

from __future__ import annotations

import numpy as np
import pytest

from edge.gate import FrameGate, GateResult
from edge.policy.settings import GatePolicy

HEIGHT, WIDTH = 240, 320


def scene(seed: int = 0) -> np.ndarray:
    """A textured BGR background, the same for a given seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=(HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))


def with_noise(frame: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    return np.clip(frame.astype(np.float32) + rng.normal(0.0, sigma, frame.shape), 0, 255).astype(np.uint8)


def with_square(frame: np.ndarray, x: int, y: int, size: int = 40, value: int = 250) -> np.ndarray:
    out = frame.copy()
    out[y : y + size, x : x + size] = value
    return out


def test_first_frame_counts_as_changed():
    result = FrameGate(GatePolicy()).check(scene())
    assert result == GateResult(changed=True, changed_fraction=1.0, background_ready=False)


def test_identical_frames_after_the_first_are_gated():
    gate = FrameGate(GatePolicy())
    frame = scene()
    gate.check(frame)
    results = [gate.check(frame) for _ in range(5)]
    assert all(not r.changed and r.changed_fraction == 0.0 for r in results)


def test_sensor_noise_on_a_static_scene_is_gated():
    gate = FrameGate(GatePolicy())
    rng = np.random.default_rng(1)
    frame = scene()
    gate.check(with_noise(frame, rng))
    results = [gate.check(with_noise(frame, rng, sigma=5.0)) for _ in range(50)]
    assert sum(r.changed for r in results) == 0


def test_an_object_appearing_is_change_in_proportion_to_its_area():
    gate = FrameGate(GatePolicy())
    frame = scene()
    gate.check(frame)
    result = gate.check(with_square(frame, 100, 80, size=64))
    assert result.changed
    # a 64x64 square covers 5.3% of a 320x240 frame; blur and rescaling blur its edge a little
    assert 0.04 < result.changed_fraction < 0.07


def test_an_object_crossing_is_changed_on_every_frame():
    gate = FrameGate(GatePolicy())
    rng = np.random.default_rng(2)
    frame = scene()
    gate.check(frame)
    results = [gate.check(with_noise(with_square(frame, x, 100), rng)) for x in range(0, WIDTH - 40, 20)]
    assert all(r.changed for r in results)


def test_slow_light_drift_is_absorbed_by_the_background():
    gate = FrameGate(GatePolicy())
    frame = scene().astype(np.float32)
    results = [gate.check(np.clip(frame * (1.0 + 0.003 * i), 0, 255).astype(np.uint8)) for i in range(100)]
    # 0.3% brighter per frame: +30% over the run, yet never a jump the gate should report
    assert sum(r.changed for r in results[1:]) == 0


def test_an_object_that_stays_put_stops_counting_as_change():
    gate = FrameGate(GatePolicy())
    frame = scene()
    gate.check(frame)
    parked = with_square(frame, 100, 80)
    results = [gate.check(parked) for _ in range(120)]
    assert results[0].changed
    assert not any(r.changed for r in results[-20:])


def test_a_very_high_pixel_threshold_gates_everything_but_the_first_frame():
    gate = FrameGate(GatePolicy(pixel_diff_threshold=255))
    frame = scene()
    frames = [frame, *(with_square(frame, x, 60) for x in range(0, 280, 40)), np.zeros_like(frame)]
    results = [gate.check(f) for f in frames]
    assert results[0].changed
    assert not any(r.changed for r in results[1:])


def test_the_area_fraction_decides_how_much_change_is_enough():
    frame = scene()
    moved = with_square(frame, 100, 80, size=16)  # ~0.3% of the frame
    strict = FrameGate(GatePolicy(changed_area_fraction=0.01))
    lenient = FrameGate(GatePolicy(changed_area_fraction=0.001))
    for gate in (strict, lenient):
        gate.check(frame)
    assert not strict.check(moved).changed
    assert lenient.check(moved).changed


def test_a_policy_update_applies_from_the_next_frame():
    gate = FrameGate(GatePolicy(pixel_diff_threshold=255))
    frame = scene()
    gate.check(frame)
    assert not gate.check(with_square(frame, 0, 0)).changed
    gate.update_policy(GatePolicy(pixel_diff_threshold=18))
    assert gate.policy.pixel_diff_threshold == 255  # not yet: no frame since
    assert gate.check(with_square(frame, 200, 150)).changed
    assert gate.policy.pixel_diff_threshold == 18


def test_a_new_downscale_width_restarts_the_background():
    gate = FrameGate(GatePolicy(downscale_width=160))
    frame = scene()
    gate.check(frame)
    gate.update_policy(GatePolicy(downscale_width=80))
    assert gate.check(frame) == GateResult(changed=True, changed_fraction=1.0, background_ready=False)
    assert not gate.check(frame).changed


def test_a_policy_update_with_the_same_width_keeps_the_background():
    gate = FrameGate(GatePolicy())
    frame = scene()
    gate.check(frame)
    gate.update_policy(GatePolicy(changed_area_fraction=0.01))
    assert not gate.check(frame).changed


def test_a_resolution_change_restarts_the_background():
    gate = FrameGate(GatePolicy())
    gate.check(scene())
    bigger = np.kron(scene(), np.ones((2, 2, 1), dtype=np.uint8))
    assert gate.check(bigger) == GateResult(changed=True, changed_fraction=1.0, background_ready=False)
    assert not gate.check(bigger).changed


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda f: f[:, :, 0].copy(), id="grey"),
        pytest.param(lambda f: f[:, :, :1].copy(), id="one-channel"),
        pytest.param(lambda f: np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]), id="bgra"),
    ],
)
def test_grey_and_bgra_frames_are_gated_like_bgr(convert):
    gate = FrameGate(GatePolicy())
    frame = scene()
    gate.check(convert(frame))
    assert not gate.check(convert(frame)).changed
    assert gate.check(convert(with_square(frame, 100, 80))).changed


def test_frames_narrower_than_the_downscale_width_are_compared_as_they_are():
    gate = FrameGate(GatePolicy(downscale_width=160))
    tiny = np.full((6, 8, 3), 100, np.uint8)
    gate.check(tiny)
    assert not gate.check(tiny).changed
    brighter = tiny.copy()
    brighter[:, :4] = 200
    assert gate.check(brighter).changed


def test_a_frame_that_is_not_an_image_is_refused_with_its_shape():
    with pytest.raises(ValueError, match=r"\(4, 4, 2\)"):
        FrameGate(GatePolicy()).check(np.zeros((4, 4, 2), np.uint8))


def test_background_weight_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="background_alpha"):
        FrameGate(GatePolicy(), background_alpha=0.0)


def test_the_changed_box_surrounds_what_moved_and_not_the_noise():
    gate = FrameGate(GatePolicy())
    rng = np.random.default_rng(3)
    frame = scene()
    gate.check(with_noise(frame, rng))
    result = gate.check(with_noise(with_square(frame, 200, 40, size=32), rng, sigma=5.0))
    assert result.changed and result.changed_box is not None
    x1, y1, x2, y2 = result.changed_box
    # The square is (200, 40)-(232, 72); downscaling by 2 and the blur blur its edge by a few pixels.
    assert 190 <= x1 <= 200 and 30 <= y1 <= 40
    assert 232 <= x2 <= 242 and 72 <= y2 <= 82


def test_no_changed_box_without_change():
    gate = FrameGate(GatePolicy())
    frame = scene()
    gate.check(frame)
    assert gate.check(frame).changed_box is None
