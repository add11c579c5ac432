"""Each mining strategy on fixed detections, including Sedna's defaults and empty frames."""

from __future__ import annotations

import math

import pytest

from common.detect import Detection
from edge.mine import MiningContext
from edge.mine.strategies import (
    CrossEntropy,
    ImageBoxThreshold,
    MotionWithoutDetection,
    UncertaintyBand,
    WatchList,
)
from edge.mine.strategies.cross_entropy import normalised_confidence
from edge.policy.settings import Band, MiningPolicy

# Sedna's rules see every box the detector kept; a band starting at 0 does the same here.
ALL_BOXES = Band(low=0.0, high=0.6)


def det(label: str, score: float) -> Detection:
    return Detection(box=(0.0, 0.0, 10.0, 10.0), score=score, class_id=0, label=label)


def ctx(*detections: Detection, motion: bool = True) -> MiningContext:
    return MiningContext("cam0", 7, motion, detections)


def scores(*values: float) -> MiningContext:
    return ctx(*(det("cat", v) for v in values))


# -- uncertainty band ---------------------------------------------------------------------------


def test_band_fires_on_a_score_inside_the_band_inclusive_of_its_edges():
    policy = MiningPolicy()  # default band [0.25, 0.6]
    band = UncertaintyBand()
    assert band.evaluate(scores(0.25), policy) is not None
    assert band.evaluate(scores(0.6), policy) is not None
    assert band.evaluate(scores(0.61), policy) is None
    assert band.evaluate(scores(0.24), policy) is None


def test_band_priority_is_highest_at_the_middle_and_falls_toward_the_edges():
    policy = MiningPolicy(default_band=Band(low=0.2, high=0.6))
    band = UncertaintyBand()
    votes = [band.evaluate(scores(s), policy) for s in (0.4, 0.45, 0.5, 0.55, 0.6)]
    priorities = [vote.priority for vote in votes if vote is not None]
    assert len(priorities) == len(votes)
    assert priorities[0] == pytest.approx(1.0)
    assert priorities == sorted(priorities, reverse=True)
    assert len(set(priorities)) == len(priorities)
    assert priorities[-1] > 0.05  # still above the random audit


def test_band_votes_for_the_most_uncertain_detection():
    vote = UncertaintyBand().evaluate(ctx(det("cat", 0.58), det("dog", 0.43), det("cup", 0.9)), MiningPolicy())
    assert vote is not None
    assert vote.detail.startswith("dog 0.43 in band [0.25, 0.60]")
    assert "+1 more" in vote.detail


def test_band_is_per_class():
    policy = MiningPolicy(bands={"person": Band(low=0.5, high=0.8)})
    band = UncertaintyBand()
    assert band.evaluate(ctx(det("person", 0.7)), policy) is not None
    assert band.evaluate(ctx(det("cat", 0.7)), policy) is None
    assert band.evaluate(ctx(det("person", 0.3)), policy) is None  # below person's low: noise
    assert band.evaluate(ctx(det("cat", 0.3)), policy) is not None


# -- IBT (Sedna IBTFilter) ----------------------------------------------------------------------


def test_ibt_defaults_are_sednas():
    policy = MiningPolicy()
    assert policy.ibt_box_score_threshold == 0.5
    assert policy.ibt_image_fraction_threshold == 0.5


@pytest.mark.parametrize(
    ("values", "hard"),
    [
        ((0.3, 0.9), True),  # half the boxes unsure: 0.5 >= 1 - 0.5
        ((0.5, 0.9), True),  # a box at the threshold counts as unsure (<=)
        ((0.3, 0.8, 0.9), False),  # a third unsure
        ((0.2, 0.3, 0.4), True),
        ((0.51, 0.9), False),
        ((0.9,), False),
    ],
)
def test_ibt_with_sednas_defaults(values, hard):
    policy = MiningPolicy(ibt_enabled=True, default_band=ALL_BOXES)
    assert (ImageBoxThreshold().evaluate(scores(*values), policy) is not None) is hard


def test_ibt_is_not_hard_on_an_empty_frame():
    assert ImageBoxThreshold().evaluate(ctx(), MiningPolicy(ibt_enabled=True)) is None


def test_ibt_thresholds_come_from_the_policy():
    strict = MiningPolicy(ibt_enabled=True, ibt_image_fraction_threshold=0.9, default_band=ALL_BOXES)
    loose = MiningPolicy(ibt_enabled=True, ibt_image_fraction_threshold=0.1, default_band=ALL_BOXES)
    frame = scores(0.3, 0.8, 0.9)  # one box in three unsure
    assert ImageBoxThreshold().evaluate(frame, strict) is not None  # hard from 10%
    assert ImageBoxThreshold().evaluate(frame, loose) is None  # hard from 90%
    high_box = MiningPolicy(ibt_enabled=True, ibt_box_score_threshold=0.85, default_band=ALL_BOXES)
    assert ImageBoxThreshold().evaluate(frame, high_box) is not None  # two in three unsure


def test_ibt_ignores_boxes_below_their_band_low():
    policy = MiningPolicy(ibt_enabled=True)  # band low 0.25
    assert ImageBoxThreshold().evaluate(scores(0.1, 0.1, 0.9), policy) is None


def test_ibt_priority_grows_with_the_unsure_share():
    policy = MiningPolicy(ibt_enabled=True, default_band=ALL_BOXES)
    half = ImageBoxThreshold().evaluate(scores(0.3, 0.9), policy)
    all_unsure = ImageBoxThreshold().evaluate(scores(0.3, 0.4), policy)
    assert half is not None and all_unsure is not None
    assert all_unsure.priority > half.priority


# -- cross-entropy (Sedna CrossEntropyFilter) ---------------------------------------------------


def test_cross_entropy_default_is_sednas():
    assert MiningPolicy().cross_entropy_threshold == 0.5


@pytest.mark.parametrize(
    ("values", "confidence"),
    [
        ((0.9, 0.1), 1 + (0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)),  # 0.531
        ((0.8, 0.3), 0.1548),
        ((0.7, 0.7), 0.0),
        ((0.6, 0.6, 0.6), 0.0),
        ((1.0, 0.0), 1.0),  # 0 * log 0 counts as 0
    ],
)
def test_cross_entropy_confidence_on_normalised_scores(values, confidence):
    assert normalised_confidence(list(values)) == pytest.approx(confidence, abs=1e-3)


@pytest.mark.parametrize("values", [(), (0.4,), (0.0, 0.0)])
def test_cross_entropy_is_undefined_for_fewer_than_two_scores_or_none_positive(values):
    assert normalised_confidence(list(values)) is None


@pytest.mark.parametrize(
    ("values", "hard"),
    [((0.9, 0.1), False), ((0.8, 0.3), True), ((0.7, 0.7), True), ((0.9,), False), ((), False)],
)
def test_cross_entropy_with_sednas_default(values, hard):
    policy = MiningPolicy(cross_entropy_enabled=True, default_band=ALL_BOXES)
    assert (CrossEntropy().evaluate(scores(*values), policy) is not None) is hard


def test_cross_entropy_threshold_comes_from_the_policy():
    policy = MiningPolicy(cross_entropy_enabled=True, cross_entropy_threshold=0.1, default_band=ALL_BOXES)
    assert CrossEntropy().evaluate(scores(0.8, 0.3), policy) is None  # confidence 0.15 >= 0.1
    assert CrossEntropy().evaluate(scores(0.7, 0.7), policy) is not None


# -- watch-list ---------------------------------------------------------------------------------


def test_watch_list_fires_on_a_listed_label_at_or_above_its_band_low():
    policy = MiningPolicy(watch_list=("person",))
    watch = WatchList()
    assert watch.evaluate(ctx(det("person", 0.95)), policy) is not None
    assert watch.evaluate(ctx(det("person", 0.25)), policy) is not None
    assert watch.evaluate(ctx(det("person", 0.2)), policy) is None
    assert watch.evaluate(ctx(det("cat", 0.5)), policy) is None


def test_watch_list_priority_is_high_and_higher_when_unsure():
    policy = MiningPolicy(watch_list=("person",))
    sure = WatchList().evaluate(ctx(det("person", 0.95)), policy)
    unsure = WatchList().evaluate(ctx(det("person", 0.95), det("person", 0.43)), policy)
    assert sure is not None and unsure is not None
    assert 0.9 <= sure.priority < unsure.priority <= 1.0


def test_watch_list_is_off_when_empty_or_disabled():
    assert not WatchList().enabled(MiningPolicy())
    assert not WatchList().enabled(MiningPolicy(watch_list=("person",), watch_list_enabled=False))
    assert WatchList().enabled(MiningPolicy(watch_list=("person",)))


# -- motion without detection -------------------------------------------------------------------


def test_motion_without_any_detection_is_suspicious():
    vote = MotionWithoutDetection().evaluate(ctx(motion=True), MiningPolicy())
    assert vote is not None
    assert vote.priority == 0.5


def test_motion_with_only_noise_detections_is_suspicious():
    vote = MotionWithoutDetection().evaluate(ctx(det("cat", 0.1), motion=True), MiningPolicy())
    assert vote is not None
    assert "below their band low" in vote.detail


def test_no_motion_or_a_real_detection_is_not_a_miss():
    strategy = MotionWithoutDetection()
    assert strategy.evaluate(ctx(motion=False), MiningPolicy()) is None
    assert strategy.evaluate(ctx(det("cat", 0.3), motion=True), MiningPolicy()) is None
