"""The answer shapes real GLM-4.xV checkpoints write (zai-org/GLM-V's README and code, transformers' glm4v
docs; see cloud/backends/verdict_text.py) parse to the right verdict and boxes.

Each text below is built from the documented shape (reasoning in think tags, GLM-4.1V's answer tags,
GLM-4.5V's bare answer after the reasoning, box markers around 0-1000 grid coordinates in varying
brackets, JSON in code fences), with this project's verdict object as the answer.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cloud.backends.verdict_text import (
    RULES_HEADER,
    ParsedAnswer,
    answer_schema,
    build_prompt,
    parse_answer,
    parse_structured,
    split_answer,
    to_result,
)
from cloud.convert import CloudDetection, CropBox, RuleAnswer, RuleQuestion, SampleInput

VERDICT = {"decision": "confirmed", "labels": ["cat"], "confidence": 0.9, "description": "a cat on a wall"}
ANSWER = json.dumps(VERDICT)
PARSED = ParsedAnswer("confirmed", ("cat",), 0.9, "a cat on a wall")
REASONING = "The edge says cat at 0.42. I see ears and whiskers on the left, so it is a cat."
B, E = "<|begin_of_box|>", "<|end_of_box|>"


def sample(
    width: int = 200, height: int = 100, crop: CropBox | None = None, detections: tuple[CloudDetection, ...] = ()
) -> SampleInput:
    return SampleInput(
        sample_id="s-1",
        edge_id="edge-1",
        camera_id="cam",
        frame_seq=1,
        captured_at=0.0,
        image=np.zeros((height, width, 3), np.uint8),
        crop=crop,
        frame_size=(1920, 1080),
        detections=detections,
        mined_reason="uncertainty_band",
        priority=0.5,
        trace_id="t",
    )


EDGE_CAT = CloudDetection("cat", 15, 0.42, (60.0, 30.0, 150.0, 90.0))


@pytest.mark.parametrize(
    "text",
    [
        f"<think>\n{REASONING}</think>\n<answer>{ANSWER}</answer>",  # GLM-4.1V-Thinking
        f"<think>{REASONING}</think>\n{ANSWER}",  # GLM-4.5V / 4.6V: no answer tags
        f"{REASONING}</think>{ANSWER}",  # the template opened the think block in the prompt
        f"<think>{REASONING}</think><answer>{B}{ANSWER}{E}</answer>",  # the final answer boxed
        f"<think>{REASONING}</think>\n```json\n{ANSWER}\n```",  # JSON in a code fence
    ],
)
def test_a_thinking_answer_gives_the_verdict_after_the_reasoning_and_counts_the_reasoning(text: str) -> None:
    parsed = parse_answer(text)
    assert parsed is not None
    assert (parsed.decision, parsed.labels, parsed.confidence, parsed.description) == (
        "confirmed",
        ("cat",),
        0.9,
        "a cat on a wall",
    )
    assert parsed.reasoning_chars == len(REASONING)
    assert parsed.boxes == ()


def test_with_thinking_off_the_bare_answer_parses_with_no_reasoning() -> None:
    assert parse_answer(ANSWER) == PARSED
    assert parse_answer(f"<think></think>{ANSWER}") == PARSED


def test_a_verdict_written_while_thinking_is_not_the_answer() -> None:
    musing = json.dumps({**VERDICT, "decision": "rejected", "labels": []})
    parsed = parse_answer(f"<think>first guess {musing}, but look again</think><answer>{ANSWER}</answer>")
    assert parsed is not None and parsed.decision == "confirmed"
    assert parse_answer(f"<think>first guess {musing}, and then the tokens ran out") is None


def test_reasoning_returned_apart_from_the_text_is_counted() -> None:
    parsed = parse_answer(ANSWER, reasoning=f"  {REASONING}\n")
    assert parsed is not None and parsed.reasoning_chars == len(REASONING)


def test_split_answer_reads_an_unclosed_answer_tag_to_the_end() -> None:
    parts = split_answer(f"<think>{REASONING}</think><answer>{ANSWER}")
    assert (parts.reasoning, parts.final, parts.thinking_unfinished) == (REASONING, ANSWER, False)


@pytest.mark.parametrize(
    "marked",
    [
        f"{B}[100,200,500,800]{E}",
        f"{B}[[100, 200, 500, 800]]{E}",
        f"{B}(100,200,500,800){E}",
        f"{B}<100,200,500,800>{E}",
    ],
)
def test_a_grounded_box_in_any_bracket_style_maps_from_the_grid_to_frame_pixels(marked: str) -> None:
    # The image is a 200x100 crop at (50, 20): grid x/1000 of 200 px, y/1000 of 100 px, then the offset.
    crop = CropBox(50, 20, 250, 120)
    parsed = parse_answer(f"<think>{REASONING}</think>The cat is at {marked}.\n{ANSWER}")
    assert parsed is not None
    assert parsed.boxes == (("", (100.0, 200.0, 500.0, 800.0)),)
    result = to_result(parsed, "", sample(crop=crop, detections=(EDGE_CAT,)))
    assert result.decision == "confirmed"
    assert [(d.label, d.class_id, d.score) for d in result.detections] == [("cat", 15, 0.9)]
    assert result.detections[0].box == pytest.approx((70.0, 40.0, 150.0, 100.0))


def test_several_boxes_in_one_pair_or_one_pair_each_all_count() -> None:
    one_pair = parse_answer(f"{B}[[0,0,500,500],[500,500,1000,1000]]{E} {ANSWER}")
    two_pairs = parse_answer(f"{B}[0,0,500,500]{E} and {B}[500,500,1000,1000]{E} {ANSWER}")
    expected = (("", (0.0, 0.0, 500.0, 500.0)), ("", (500.0, 500.0, 1000.0, 1000.0)))
    assert one_pair is not None and one_pair.boxes == expected
    assert two_pairs is not None and two_pairs.boxes == expected


def test_a_downscaled_image_maps_back_to_the_larger_frame_area() -> None:
    # The edge sent a 200x100 image of a 400x200 area of the frame at (100, 100): pixels double.
    parsed = parse_answer(f"{B}[250,500,750,1000]{E}{ANSWER}")
    assert parsed is not None
    result = to_result(parsed, "", sample(crop=CropBox(100, 100, 500, 300)))
    assert result.detections[0].box == pytest.approx((200.0, 200.0, 400.0, 300.0))


def test_boxes_in_the_verdict_json_keep_their_labels_and_win_over_the_edge_boxes() -> None:
    answer = {**VERDICT, "labels": ["cat", "dog"], "boxes": [{"label": "dog", "bbox_2d": [0, 0, 1000, 500]}]}
    text = f"<think>{REASONING}</think>\n```json\n{json.dumps(answer)}\n```"
    parsed = parse_answer(text)
    assert parsed is not None and parsed.boxes == (("dog", (0.0, 0.0, 1000.0, 500.0)),)
    result = to_result(parsed, text, sample(detections=(EDGE_CAT,)))  # the whole 1920x1080 frame, downscaled
    assert [(d.label, d.class_id, d.box) for d in result.detections] == [("dog", 0, (0.0, 0.0, 1920.0, 540.0))]


def test_a_boxed_value_that_is_not_coordinates_is_no_box() -> None:
    parsed = parse_answer(f"<answer>It is a {B}cat{E}. {ANSWER}</answer>")
    assert parsed is not None and parsed.boxes == ()
    result = to_result(parsed, "", sample(detections=(EDGE_CAT,)))
    assert result.detections == [EDGE_CAT]  # no box located: the edge's box of the seen label


def test_a_rejected_answer_keeps_no_boxes_even_when_it_located_some() -> None:
    rejected = json.dumps({**VERDICT, "decision": "rejected", "labels": ["dog"]})
    parsed = parse_answer(f"{B}[0,0,1000,1000]{E}{rejected}")
    assert parsed is not None
    assert to_result(parsed, "", sample(detections=(EDGE_CAT,))).detections == []


@pytest.mark.parametrize(
    "bbox",
    [[500, 0, 100, 100], [0, 0, 1001, 100], [0, 0, 10], [-1, 0, 10, 10], [0, 0, "10", 10]],
)
def test_a_verdict_with_an_impossible_box_is_invalid(bbox: list[object]) -> None:
    assert parse_answer(json.dumps({**VERDICT, "boxes": [{"label": "cat", "bbox_2d": bbox}]})) is None


def test_marked_numbers_that_are_no_box_are_ignored() -> None:
    parsed = parse_answer(f"{B}[900,0,100,100]{E}{B}[1,2,3]{E}{ANSWER}")
    assert parsed is not None and parsed.boxes == ()


def test_a_structured_answer_must_be_the_object_alone() -> None:
    assert parse_structured(ANSWER) == (PARSED, "")
    after_thinking, _ = parse_structured(f"<think>{REASONING}</think>{ANSWER}")
    assert after_thinking is not None and after_thinking.reasoning_chars == len(REASONING)
    prose, why = parse_structured(f"Here you are: {ANSWER}")
    assert prose is None and "not the verdict schema" in why
    wrong, why = parse_structured(json.dumps({**VERDICT, "decision": "maybe"}))
    assert wrong is None and "decision" in why
    unfinished, why = parse_structured(f"<think>{REASONING}")
    assert unfinished is None and "still thinking" in why


def test_the_schema_names_the_verdict_fields_and_requires_decision_and_confidence() -> None:
    schema = answer_schema()
    assert set(schema["properties"]) == {"decision", "labels", "confidence", "description", "boxes", "rules"}
    assert set(schema["required"]) == {"decision", "confidence"}
    assert schema["properties"]["decision"]["enum"] == ["confirmed", "rejected", "unsure"]
    rule = schema["$defs"]["RuleVerdict"]
    assert set(rule["properties"]) == {"id", "match", "reason"} and set(rule["required"]) == {"id", "match"}
    assert rule["properties"]["match"]["enum"] == ["matched", "not_matched", "unsure"]


def test_rules_are_listed_after_the_question_and_their_answers_read_as_models_write_them() -> None:
    asked = replace(
        sample(), rules=(RuleQuestion("fence", "a person climbing the fence"), RuleQuestion("bag", "a bag"))
    )
    prompt = build_prompt(asked, "Is it there?")
    assert prompt.endswith(f"{RULES_HEADER}\n[fence] a person climbing the fence\n[bag] a bag")
    assert build_prompt(sample(), "Is it there?") == build_prompt(replace(sample(), rules=()), "Is it there?")
    text = (
        '<think>the person is on the fence</think>{"decision": "confirmed", "labels": ["person"], "confidence": 0.8, '
        '"rules": [{"id": "fence", "match": "Yes", "reason": "on  it"}, {"id": "bag", "match": false}]}'
    )
    result = to_result(parse_answer(text), text, asked)
    assert result.rule_answers == (RuleAnswer("fence", "matched", "on it"), RuleAnswer("bag", "not_matched", ""))
    bad = '{"decision": "confirmed", "confidence": 0.8, "rules": [{"id": "fence", "match": "perhaps"}]}'
    assert parse_structured(bad)[0] is None and "rules.0.match" in parse_structured(bad)[1]


def test_an_unparsable_answer_says_why() -> None:
    result = to_result(None, "<think>hmm", sample(), why="the model was still thinking when max_tokens ran out")
    assert result.decision == "unsure"
    assert result.text == "unparsable answer: '<think>hmm' (the model was still thinking when max_tokens ran out)"
