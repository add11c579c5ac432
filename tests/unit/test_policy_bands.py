"""The closed loop's band arithmetic, pure: objective, audit weighting, hysteresis, minimum counts.

The generated streams draw edge scores for true objects from U(0.4, 1.0) and for false ones from
U(0.0, 0.6), in equal numbers, and the cloud's decision is the truth. For targets recall 0.95 and
precision 0.95 the right band is known in closed form:
    low:  P(s >= low | true) = 0.95         -> low = 0.4 + 0.05 * 0.6 = 0.43
    high: (1 - h) / ((1 - h) + (0.6 - h)) = 0.95 -> h = 0.52 / 0.9 = 0.5778
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from cloud.convert import CloudDetection, CropBox, SampleInput
from cloud.policy.bands import ScorePair, best_band, edge_decisions, estimate, plan_band
from protos import sample_pb2, verdict_pb2

TARGET = 0.95
RIGHT_LOW, RIGHT_HIGH = 0.43, 0.52 / 0.9
START = (0.25, 0.6)


def objects(rng: random.Random, count: int) -> list[tuple[float, bool]]:
    """`count` true and `count` false objects as (edge score, truth)."""
    true = [(rng.uniform(0.4, 1.0), True) for _ in range(count)]
    false = [(rng.uniform(0.0, 0.6), False) for _ in range(count)]
    return true + false


def seen_by_cloud(
    rng: random.Random, population: list[tuple[float, bool]], band: tuple[float, float], audit_rate: float
) -> list[ScorePair]:
    """What the cloud gets from an edge with `band`: every in-band object, an audited share of the others."""
    pairs = []
    for score, truth in population:
        if band[0] <= score <= band[1]:
            pairs.append(ScorePair(score, truth))
        elif rng.random() < audit_rate:
            pairs.append(ScorePair(score, truth, weight=1.0 / audit_rate, audit=True))
    return pairs


def plan(pairs: list[ScorePair], current: tuple[float, float], hysteresis: float = 0.02, min_pairs: int = 100):
    return plan_band(
        pairs,
        current,
        target_recall=TARGET,
        target_precision=TARGET,
        hysteresis=hysteresis,
        min_pairs=min_pairs,
        min_audit_pairs=10,
    )


def true_estimate(band: tuple[float, float], seed: int = 99) -> tuple[float, float]:
    """Recall and upload share of `band` on a fresh, fully observed population."""
    population = [ScorePair(s, t) for s, t in objects(random.Random(seed), 50_000)]
    result = estimate(population, *band)
    assert result.recall is not None
    return result.recall, result.upload


def test_on_the_full_population_the_band_is_the_analytic_one() -> None:
    pairs = [ScorePair(s, t) for s, t in objects(random.Random(1), 20_000)]
    band = best_band(pairs, TARGET, TARGET)
    assert band is not None
    assert band[0] == pytest.approx(RIGHT_LOW, abs=0.01)
    assert band[1] == pytest.approx(RIGHT_HIGH, abs=0.01)


def test_audit_weights_remove_the_bias_of_seeing_only_the_band() -> None:
    rng = random.Random(2)
    seen = seen_by_cloud(rng, objects(rng, 20_000), START, audit_rate=0.05)
    weighted = best_band(seen, TARGET, TARGET)
    unweighted = best_band([ScorePair(p.score, p.confirmed) for p in seen], TARGET, TARGET)
    assert weighted is not None and unweighted is not None
    assert weighted[0] == pytest.approx(RIGHT_LOW, abs=0.005)
    assert weighted[1] == pytest.approx(RIGHT_HIGH, abs=0.005)
    # Counting an audited object once, as if every object were seen, misplaces both bounds.
    assert abs(unweighted[0] - RIGHT_LOW) > 0.015
    assert abs(unweighted[1] - RIGHT_HIGH) > 0.015


def test_the_loop_converges_uploads_less_and_keeps_recall() -> None:
    rng = random.Random(3)
    band = START
    window: list[ScorePair] = []
    for _ in range(8):  # rounds of traffic under the band in force, the window keeps the newest pairs
        window = (window + seen_by_cloud(rng, objects(rng, 10_000), band, audit_rate=0.1))[-20_000:]
        step = plan(window, band)
        if step.proposed is not None:
            band = (step.proposed.low, step.proposed.high)
    assert band[0] == pytest.approx(RIGHT_LOW, abs=0.02)
    assert band[1] == pytest.approx(RIGHT_HIGH, abs=0.02)
    start_recall, start_upload = true_estimate(START)
    end_recall, end_upload = true_estimate(band)
    assert end_upload < 0.6 * start_upload
    # The target holds up to the sampling error of the window: below the band only audits (about 100
    # pairs of 10 000 objects' tail) show the confirmed objects the edge drops.
    assert end_recall >= TARGET - 0.01
    assert start_recall == 1.0


def test_small_fluctuations_within_the_hysteresis_do_not_move_the_band() -> None:
    rng = random.Random(4)
    settled = (RIGHT_LOW, RIGHT_HIGH)
    held = moved_without_hysteresis = 0
    for _ in range(10):
        window = seen_by_cloud(rng, objects(rng, 1_500), settled, audit_rate=0.2)
        held += plan(window, settled, hysteresis=0.03).proposed is None
        moved_without_hysteresis += plan(window, settled, hysteresis=0.0).proposed is not None
    assert held == 10
    assert moved_without_hysteresis == 10  # the optimum does fluctuate from window to window


def test_nothing_moves_before_min_pairs() -> None:
    rng = random.Random(5)
    pairs = seen_by_cloud(rng, objects(rng, 2_000), START, audit_rate=0.2)
    before = plan(pairs[:499], START, min_pairs=500)
    at = plan(pairs[:500], START, min_pairs=500)
    assert before.proposed is None and "min_pairs" in before.why
    assert at.proposed is not None


def test_nothing_moves_without_enough_audit_pairs() -> None:
    rng = random.Random(6)
    in_band_only = [p for p in seen_by_cloud(rng, objects(rng, 2_000), START, audit_rate=0.2) if not p.audit]
    result = plan(in_band_only, START)
    assert result.proposed is None and "audit" in result.why


def test_a_class_the_cloud_never_confirmed_keeps_its_band() -> None:
    pairs = [ScorePair(0.1 + i / 1000, False, audit=i % 2 == 0) for i in range(500)]
    assert best_band(pairs, TARGET, TARGET) is None
    assert plan(pairs, START).proposed is None


def test_estimate_follows_the_edge_miner_at_the_bounds() -> None:
    # low <= s <= high is sent, s > high accepted locally, s < low dropped (edge/mine/base.py, miner.py).
    pairs = [ScorePair(0.2, True), ScorePair(0.6, True), ScorePair(0.61, False), ScorePair(0.9, True)]
    result = estimate(pairs, 0.2, 0.6)
    assert result.recall == 1.0
    assert result.upload == 0.5
    assert result.precision == 0.5
    assert estimate(pairs, 0.21, 0.6).recall == pytest.approx(2 / 3)


def test_precision_target_keeps_high_above_the_false_objects() -> None:
    # 19 true and 1 false above 0.7: precision 0.95 exactly; one more false object below pushes high up.
    pairs = [ScorePair(0.71 + i * 0.01, True) for i in range(19)] + [ScorePair(0.75, False)]
    pairs += [ScorePair(0.5, False), ScorePair(0.3, True)]
    band = best_band(pairs, 0.9, TARGET)
    assert band is not None
    assert 0.5 < band[1] < 0.71


def sample(detections: list[CloudDetection], crop: CropBox | None = None) -> SampleInput:
    return SampleInput(
        sample_id="s-1",
        edge_id="gw-1",
        camera_id="cam0",
        frame_seq=1,
        captured_at=0.0,
        image=np.zeros((48, 64, 3), dtype=np.uint8),
        crop=crop,
        frame_size=(640, 480),
        detections=tuple(detections),
        mined_reason="uncertainty_band",
        priority=0.5,
        trace_id="t",
    )


def verdict(decision: int, found: list[CloudDetection]) -> verdict_pb2.Verdict:
    return verdict_pb2.Verdict(
        decision=decision,  # type: ignore[arg-type]
        detections=[
            sample_pb2.Detection(
                label=f.label, score=f.score, box=sample_pb2.Box(x1=f.box[0], y1=f.box[1], x2=f.box[2], y2=f.box[3])
            )
            for f in found
        ],
    )


def test_each_edge_detection_gets_the_decision_of_its_own_object() -> None:
    person = CloudDetection("person", 0, 0.4, (10.0, 10.0, 110.0, 210.0))
    ghost = CloudDetection("person", 0, 0.5, (400.0, 300.0, 450.0, 350.0))
    car = CloudDetection("car", 2, 0.7, (200.0, 200.0, 300.0, 260.0))
    found = [CloudDetection("person", 0, 0.9, (12.0, 8.0, 112.0, 205.0)), CloudDetection("truck", 7, 0.8, car.box)]
    decided = edge_decisions(sample([person, ghost, car]), verdict(verdict_pb2.DECISION_CONFIRMED, found), 0.3)
    assert decided == [True, False, False]
    in_crop = sample([person, car], crop=CropBox(0, 0, 320, 320))
    assert edge_decisions(in_crop, verdict(verdict_pb2.DECISION_CONFIRMED, found[:1]), 0.3) == [True, False]
    # A verdict without boxes (a text-only model) judges the whole sample.
    assert edge_decisions(sample([person, car]), verdict(verdict_pb2.DECISION_REJECTED, []), 0.3) == [False, False]
    assert edge_decisions(sample([person]), verdict(verdict_pb2.DECISION_CONFIRMED, []), 0.3) == [True]
