"""The language-model backends' text: prompts from samples, answers parsed out of free text, verdicts from answers."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest

from cloud.backends.verdict_text import (
    DEFAULT_QUESTION,
    ParsedAnswer,
    build_prompt,
    format_answer,
    format_prompt,
    parse_answer,
    to_result,
)
from cloud.convert import CloudDetection, CropBox, SampleInput

ANSWER = '{"decision": "confirmed", "labels": ["cat"], "confidence": 0.93, "description": "a cat on grass"}'
PARSED = ParsedAnswer("confirmed", ("cat",), 0.93, "a cat on grass")


def sample(detections=(), reason="uncertainty_band") -> SampleInput:
    return SampleInput(
        sample_id="s1",
        edge_id="e1",
        camera_id="c1",
        frame_seq=3,
        captured_at=0.0,
        image=np.zeros((32, 32, 3), np.uint8),
        crop=CropBox(10, 10, 42, 42),
        frame_size=(640, 480),
        detections=tuple(detections),
        mined_reason=reason,
        priority=0.5,
        trace_id="t",
    )


def cat(score=0.62, box=(12.0, 12.0, 40.0, 40.0)) -> CloudDetection:
    return CloudDetection("cat", 1, score, box)


def test_prompt_states_detections_scores_reason_and_question():
    text = build_prompt(sample([cat(0.62), CloudDetection("person", 0, 0.31, (0, 0, 5, 5))]), "Is it a cat?", None)
    assert "cat 0.62, person 0.31" in text
    assert "uncertainty_band" in text
    assert "Is it a cat?" in text


def test_prompt_without_detections_says_none_and_template_is_used():
    template = "[{detections}|{reason}] {question}"
    text = build_prompt(sample(reason="motion_without_detection"), DEFAULT_QUESTION, template)
    assert text == f"[none|motion_without_detection] {DEFAULT_QUESTION}"
    assert format_prompt([], "motion_without_detection", DEFAULT_QUESTION, template) == text


def test_canonical_answer_round_trips():
    assert parse_answer(format_answer(PARSED)) == PARSED


@pytest.mark.parametrize(
    "text",
    [
        ANSWER,
        f"Sure! Here is my verdict:\n{ANSWER}\nHope this helps.",
        f"```json\n{ANSWER}\n```",
        f"{ANSWER}<|endoftext|>garbage {{ not json",
        f'{{"note": "no decision here"}} then {ANSWER}',
        f"{{broken {ANSWER}",
        ANSWER.replace('"confirmed"', '"Confirmed"'),
    ],
)
def test_first_valid_object_is_found_through_surrounding_text(text):
    assert parse_answer(text) == PARSED


@pytest.mark.parametrize(
    "text",
    [
        "",
        "the image shows a cat",
        "{",
        '{"decision": "maybe", "labels": [], "confidence": 0.5}',
        '{"decision": "confirmed", "labels": "cat", "confidence": 0.5}',
        '{"decision": "confirmed", "labels": [1], "confidence": 0.5}',
        '{"decision": "confirmed", "labels": [], "confidence": 1.5}',
        '{"decision": "confirmed", "labels": [], "confidence": true}',
        '{"decision": "confirmed", "labels": [], "confidence": "high"}',
        '{"decision": "confirmed", "labels": [], "confidence": NaN}',
        '{"decision": "confirmed", "labels": []}',
        '{"decision": "confirmed", "labels": [], "confidence": 0.5, "description": 3}',
        '["decision", "confirmed"]',
    ],
)
def test_invalid_answers_are_none(text):
    assert parse_answer(text) is None


def test_fuzzed_text_never_raises_and_embedded_answer_is_found():
    rng = random.Random(7)
    alphabet = string.printable + '{}[]":,é→'
    for _ in range(500):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        parsed = parse_answer(junk)
        assert parsed is None or parsed.decision in ("confirmed", "rejected", "unsure")
        cut = rng.randint(0, len(junk))
        # Junk before may open an object that swallows the answer; junk without braces cannot.
        clean = junk.replace("{", "(").replace("}", ")")
        assert parse_answer(clean[:cut] + ANSWER + clean[cut:]) == PARSED


def test_truncated_answers_are_none():
    for end in range(len(ANSWER)):
        assert parse_answer(ANSWER[:end]) is None


def test_confirmed_result_keeps_edge_boxes_of_seen_labels():
    person = CloudDetection("person", 0, 0.3, (0, 0, 5, 5))
    result = to_result(PARSED, ANSWER, sample([cat(), person]))
    assert result.decision == "confirmed"
    assert result.detections == [cat()]
    assert result.text == "a cat on grass"
    assert result.confidence == pytest.approx(0.93)


def test_rejected_result_has_no_boxes():
    parsed = ParsedAnswer("rejected", ("person",), 0.8, "a person, not a cat")
    result = to_result(parsed, "", sample([cat()]))
    assert (result.decision, result.detections, result.confidence) == ("rejected", [], 0.8)


def test_unparsable_answer_is_unsure_and_keeps_raw_text():
    result = to_result(None, "I think it is a cat", sample([cat()]))
    assert result.decision == "unsure"
    assert result.detections == []
    assert "I think it is a cat" in result.text
    assert result.confidence == 0.0


def test_answer_json_is_plain_json():
    assert json.loads(format_answer(PARSED))["labels"] == ["cat"]
