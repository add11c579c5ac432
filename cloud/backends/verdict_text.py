"""The text side of the language-model backends (glm, openai): the prompt they are asked, the answer they give.

A vision-language model is asked one question about one image, with what the edge claimed, and
answers with one JSON object:

    {"decision": "confirmed" | "rejected", "labels": ["cat"], "confidence": 0.93, "description": "one line"}

"confirmed" means the image shows a label the edge claimed (or, when the edge claimed nothing, any
object). `parse_answer` takes the first valid such object out of whatever the model wrote (prose,
code fences, trailing tokens); `to_result` turns it, or its absence, into a `BackendResult`. The world
GLM (`sim/glm`) is trained on exactly these prompts and answers, so keep `format_prompt` and
`format_answer` stable: changing them means retraining it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cloud.convert import BackendResult, CloudDetection, SampleInput

AnswerDecision = Literal["confirmed", "rejected", "unsure"]
ANSWER_DECISIONS: tuple[AnswerDecision, ...] = ("confirmed", "rejected", "unsure")
_DECISION_NAMES: dict[str, AnswerDecision] = {name: name for name in ANSWER_DECISIONS}

DEFAULT_QUESTION = "Does the image show what the edge detected (or any object if it detected none)?"
# Placeholders: {detections}, {reason}, {question}. Short on purpose: every token costs on a small model.
DEFAULT_TEMPLATE = "Edge: {detections}\nMined: {reason}\n{question}\nJSON: decision, labels, confidence, description"
# What the model sees when the edge reported no object (motion without detection, audits).
NO_DETECTIONS = "none"
# Raw text kept in an unsure verdict when the answer could not be parsed (verdicts are no log files).
MAX_RAW_TEXT = 500


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """A model's answer, validated: the decision, the labels it saw, its confidence (0-1), one line of text."""

    decision: AnswerDecision
    labels: tuple[str, ...]
    confidence: float
    description: str


def format_detections(detections: Sequence[tuple[str, float]]) -> str:
    """The edge's claims as prompt text: 'cat 0.62, person 0.31', or 'none'."""
    if not detections:
        return NO_DETECTIONS
    return ", ".join(f"{label} {score:.2f}" for label, score in detections)


def format_prompt(
    detections: Sequence[tuple[str, float]], reason: str, question: str, template: str | None = None
) -> str:
    """The user text from plain values (what training uses; `build_prompt` calls it for a sample)."""
    return (template or DEFAULT_TEMPLATE).format(
        detections=format_detections(detections), reason=reason, question=question
    )


def build_prompt(sample: SampleInput, question: str, template: str | None = None) -> str:
    """The user text for `sample`: the edge's detections (label and score), why it was mined, the question."""
    claims = [(d.label, d.score) for d in sample.detections]
    return format_prompt(claims, sample.mined_reason, question, template)


def format_answer(answer: ParsedAnswer) -> str:
    """The canonical JSON text of an answer (the form the world GLM is trained to write)."""
    return json.dumps(
        {
            "decision": answer.decision,
            "labels": list(answer.labels),
            "confidence": round(answer.confidence, 2),
            "description": answer.description,
        },
        ensure_ascii=False,
    )


def parse_answer(text: str) -> ParsedAnswer | None:
    """The first valid answer object in `text` (prose, code fences and junk around it are skipped); None if none."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            parsed = _validated(value)
            if parsed is not None:
                return parsed
        start = text.find("{", start + 1)
    return None


def _validated(value: dict[str, object]) -> ParsedAnswer | None:
    decision = value.get("decision")
    labels = value.get("labels", [])
    confidence = value.get("confidence")
    description = value.get("description", "")
    normalised = _DECISION_NAMES.get(decision.strip().lower()) if isinstance(decision, str) else None
    if normalised is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        return None
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        return None
    if not math.isfinite(confidence) or not 0.0 <= confidence <= 1.0:
        return None
    if not isinstance(description, str):
        return None
    return ParsedAnswer(
        decision=normalised,
        labels=tuple(label.strip() for label in labels if label.strip()),
        confidence=float(confidence),
        description=" ".join(description.split()),
    )


def to_result(parsed: ParsedAnswer | None, raw_text: str, sample: SampleInput) -> BackendResult:
    """A verdict from a parsed answer; an unparsable one is "unsure" and keeps (the start of) the raw text.

    Boxes come from the edge: a confirmed answer returns the edge's detections of the labels the model
    saw (all of them when its labels are empty); other answers return none.
    """
    if parsed is None:
        return BackendResult("unsure", [], f"unparsable answer: {raw_text[:MAX_RAW_TEXT]!r}", 0.0)
    detections: list[CloudDetection] = []
    if parsed.decision == "confirmed":
        seen = set(parsed.labels)
        detections = [d for d in sample.detections if not seen or d.label in seen]
    return BackendResult(parsed.decision, detections, parsed.description, parsed.confidence)
