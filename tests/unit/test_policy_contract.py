"""The policy contract says one thing: proto comments, settings descriptions and bounds, and the strategies agree.

Sedna's rules are transcribed here from kubeedge/sedna,
lib/sedna/algorithms/hard_example_mining/hard_example_mining.py (`IBTFilter.__call__`,
`CrossEntropyFilter.__call__`), so the edge's strategies are checked against Sedna's code, not
against our reading of it.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from common.detect import Detection
from edge.mine import MiningContext
from edge.mine.strategies import CrossEntropy, ImageBoxThreshold
from protos.policy_settings import (
    Band,
    CameraMining,
    GateSettings,
    MiningSettings,
    ModelRef,
    PolicySettings,
    UplinkSettings,
    WatchRule,
    ZonePoint,
)

PROTO = Path(__file__).resolve().parents[2] / "protos" / "policy.proto"

# proto message -> the model that is its Python side
MODELS: dict[str, type[BaseModel]] = {
    "GateSettings": GateSettings,
    "UncertaintyBand": Band,
    "MiningSettings": MiningSettings,
    "CameraMining": CameraMining,
    "UplinkSettings": UplinkSettings,
    "ModelRef": ModelRef,
    "WatchRule": WatchRule,
    "ZonePoint": ZonePoint,
    "Policy": PolicySettings,
}
# (message, proto field) -> model field, where the Python name reads better than the wire's
RENAMED = {
    ("MiningSettings", "uncertainty_bands"): "bands",
    ("MiningSettings", "default_uncertainty_band"): "default_band",
    ("MiningSettings", "watch_list_labels"): "watch_list",
}
# proto fields with no settings field: the band's label is its key in `bands`; the envelope is not a setting
WIRE_ONLY = {
    ("UncertaintyBand", "label"),
    ("CameraMining", "camera_id"),
    ("Policy", "version"),
    ("Policy", "scope"),
    ("Policy", "scope_id"),
    ("Policy", "issued_at"),
    ("Policy", "not_after"),
}
# The words that carry the direction of Sedna's rules; the behaviour tests below hold the strategies to them.
SEDNA_WORDS = {
    "ibt_box_score_threshold": ("threshold_box", "at or below this"),
    "ibt_image_fraction_threshold": ("threshold_img", "at least 1 minus this"),
    "cross_entropy_threshold": ("threshold_cross_entropy", "is below this"),
}
ALL_BOXES = Band(low=0.0, high=0.6)  # Sedna's rules see every box the detector kept


def proto_comments() -> dict[tuple[str, str], str]:
    """(message, field) -> the comment above the field, its lines joined by spaces."""
    comments: dict[tuple[str, str], str] = {}
    message: str | None = None
    pending: list[str] = []
    for raw in PROTO.read_text().splitlines():
        line = raw.strip()
        if opened := re.fullmatch(r"message (\w+) \{", line):
            message, pending = opened.group(1), []
        elif line == "}":
            message, pending = None, []
        elif line.startswith("//"):
            pending.append(line.removeprefix("//").strip())
        elif message is not None and (field := re.fullmatch(r"(?:repeated |optional )?[\w.]+ (\w+) = \d+;", line)):
            comments[(message, field.group(1))] = " ".join(pending)
            pending = []
        else:
            pending = []
    return comments


COMMENTS = proto_comments()


def model_field(message: str, proto_field: str) -> FieldInfo:
    model = MODELS[message]
    return model.model_fields[RENAMED.get((message, proto_field), proto_field)]


def bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    low = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
    high = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
    return low, high


def test_the_proto_parser_sees_every_field_of_the_policy_messages():
    assert ("MiningSettings", "cross_entropy_threshold") in COMMENTS
    assert COMMENTS[("MiningSettings", "ibt_enabled")] == "Run Sedna's image-box-threshold (IBT) rule."
    assert {message for message, _ in COMMENTS} >= set(MODELS)


def test_every_settings_field_is_a_proto_field_and_back():
    assert set(RENAMED) <= set(COMMENTS)  # the renames name real proto fields
    for message, model in MODELS.items():
        on_the_wire = {RENAMED.get(key, key[1]) for key in COMMENTS if key[0] == message and key not in WIRE_ONLY}
        assert set(model.model_fields) == on_the_wire, f"{message}: {set(model.model_fields) ^ on_the_wire}"


@pytest.mark.parametrize("key", sorted(key for key in COMMENTS if key[0] in MODELS and key not in WIRE_ONLY))
def test_each_field_means_in_python_word_for_word_what_its_proto_comment_says(key):
    assert COMMENTS[key], f"{key}: the proto field has no comment"
    assert model_field(*key).description == COMMENTS[key]


@pytest.mark.parametrize("key", sorted(key for key in COMMENTS if key[0] in MODELS and key not in WIRE_ONLY))
def test_a_range_in_a_fields_meaning_is_its_bounds(key):
    low, high = bounds(model_field(*key))
    stated = re.search(r"\((\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\)", COMMENTS[key])
    if stated is None:
        # a small closed range is worth saying; token-bucket sizes in bytes are not
        assert low is None or high is None or high > 10_000, f"{key}: say its range ({low}-{high}) in the comment"
    else:
        assert (float(stated.group(1)), float(stated.group(2))) == (low, high)


@pytest.mark.parametrize(("field", "words"), sorted(SEDNA_WORDS.items()))
def test_sednas_rules_are_described_in_sednas_terms(field, words):
    description = MiningSettings.model_fields[field].description or ""
    for word in words:
        assert word in description


def test_sednas_defaults():
    mining = MiningSettings()
    assert (mining.ibt_image_fraction_threshold, mining.ibt_box_score_threshold) == (0.5, 0.5)
    assert mining.cross_entropy_threshold == 0.5


# -- Sedna's rules, transcribed from its code ---------------------------------------------------


def sedna_ibt(box_scores: list[float], threshold_img: float, threshold_box: float) -> bool:
    if not box_scores or not all(0.0 <= s <= 1.0 for s in box_scores):
        return False
    unsure = [s for s in box_scores if s <= threshold_box]
    return len(unsure) / len(box_scores) >= (1 - threshold_img)


def sedna_cross_entropy(probabilities: list[float], threshold: float) -> bool:
    if not probabilities or not all(0.0 <= p <= 1.0 for p in probabilities):
        return False
    log_sum = sum(p * math.log(p) for p in probabilities)
    return 1 + log_sum / math.log(len(probabilities)) < threshold


def frame(*box_scores: float) -> MiningContext:
    boxes = [Detection(box=(0.0, 0.0, 10.0, 10.0), score=s, class_id=0, label="cat") for s in box_scores]
    return MiningContext("cam0", 1, True, boxes)


def ibt_fires(box_scores: list[float], threshold_img: float, threshold_box: float) -> bool:
    policy = MiningSettings(
        ibt_enabled=True,
        ibt_image_fraction_threshold=threshold_img,
        ibt_box_score_threshold=threshold_box,
        default_band=ALL_BOXES,
    )
    return ImageBoxThreshold().evaluate(frame(*box_scores), policy) is not None


def cross_entropy_fires(box_scores: list[float], threshold: float) -> bool:
    policy = MiningSettings(cross_entropy_enabled=True, cross_entropy_threshold=threshold, default_band=ALL_BOXES)
    return CrossEntropy().evaluate(frame(*box_scores), policy) is not None


@pytest.mark.parametrize(
    ("box_scores", "threshold_img", "threshold_box", "hard"),
    [
        ([0.4, 0.4, 0.4, 0.9], 0.25, 0.4, True),  # a box at threshold_box is unsure; share 3/4 is 1 - 0.25
        ([0.4, 0.4, 0.9, 0.9], 0.25, 0.4, False),  # share 1/2 is below 1 - 0.25
        ([0.41, 0.41, 0.41, 0.9], 0.25, 0.4, False),  # just above threshold_box: sure
        ([0.3, 0.9, 0.9, 0.9], 0.75, 0.5, True),  # share 1/4 reaches 1 - 0.75: a high threshold_img mines more
        ([0.3, 0.9, 0.9, 0.9], 0.5, 0.5, False),
        ([0.9], 1.0, 0.5, True),  # threshold_img 1: every frame with a box is hard
        ([0.1, 0.1], 0.0, 0.5, True),  # threshold_img 0: only frames whose every box is unsure
        ([0.1, 0.6], 0.0, 0.5, False),
        ([], 1.0, 1.0, False),  # no boxes: never hard
    ],
)
def test_ibt_is_hard_where_sednas_rule_and_its_meaning_say(box_scores, threshold_img, threshold_box, hard):
    assert sedna_ibt(box_scores, threshold_img, threshold_box) is hard
    assert ibt_fires(box_scores, threshold_img, threshold_box) is hard


def test_ibt_agrees_with_sedna_on_many_frames():
    rng = random.Random(11)
    grid = [i / 20 for i in range(21)]  # scores on the thresholds' grid, so the boundaries come up often
    for _ in range(2000):
        box_scores = [rng.choice(grid) for _ in range(rng.randint(0, 6))]
        case = (box_scores, rng.choice(grid), rng.choice(grid))
        assert ibt_fires(*case) is sedna_ibt(*case), case


@pytest.mark.parametrize(
    ("box_scores", "threshold", "hard"),
    [
        ([0.5, 0.5], 0.5, True),  # even scores: confidence 0 is below 0.5
        ([0.5, 0.5], 0.0, False),  # nothing is below 0
        ([0.8, 0.2], 0.5, True),  # confidence 1 - H(0.8, 0.2) / log 2 = 0.278
        ([0.8, 0.2], 0.25, False),
        ([0.9, 0.1], 0.5, False),  # confidence 0.531
        ([0.9, 0.1], 0.6, True),  # a higher threshold mines more
        ([0.7], 1.0, False),  # one box: Sedna divides by log 1; never hard here
    ],
)
def test_cross_entropy_is_hard_where_sednas_rule_and_its_meaning_say(box_scores, threshold, hard):
    total = sum(box_scores)
    if len(box_scores) > 1:
        assert sedna_cross_entropy([s / total for s in box_scores], threshold) is hard
    assert cross_entropy_fires(box_scores, threshold) is hard


def test_cross_entropy_at_its_threshold_is_not_hard():
    # Sedna's comparison is strict: a frame whose confidence equals the threshold is not hard
    confidence = 1 + (0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert not cross_entropy_fires([0.75, 0.25], confidence)
    assert cross_entropy_fires([0.75, 0.25], math.nextafter(confidence, 1.0))


def test_cross_entropy_agrees_with_sedna_on_many_frames():
    rng = random.Random(11)
    for _ in range(2000):
        box_scores = [rng.uniform(0.01, 1.0) for _ in range(rng.randint(2, 6))]
        threshold = rng.uniform(0.0, 1.0)
        total = sum(box_scores)
        expected = sedna_cross_entropy([s / total for s in box_scores], threshold)
        assert cross_entropy_fires(box_scores, threshold) is expected, (box_scores, threshold)
