"""The text side of the language-model backends (glm, openai): the prompt they are asked, the answer they give.

A vision-language model is asked one question about one image, with what the edge claimed, and
answers with one JSON object:

    {"decision": "confirmed" | "rejected", "labels": ["cat"], "confidence": 0.93, "description": "one line"}

"confirmed" means the image shows a label the edge claimed (or, when the edge claimed nothing, any
object). A sample that asks watch rules in plain words (`SampleInput.rules`) lists them after the
question, one per line as `[rule_id] text`, and the answer adds one entry per rule:

    "rules": [{"id": "fence", "match": "matched" | "not_matched" | "unsure", "reason": "short"}]
 `VerdictAnswer` is that object as a pydantic model: every answer is validated with it, and
`answer_schema` is its JSON schema for servers that constrain decoding to one (`response_format`).
`parse_answer` takes the first valid such object out of whatever the model wrote; `to_result` turns
it, or its absence, into a `BackendResult`. The world GLM (`sim/glm`) is trained on exactly these
prompts and answers, so keep `format_prompt` and `format_answer` stable: changing them means
retraining it.

What real GLM-4.xV checkpoints write around that object, and how it is read (checked against
zai-org/GLM-V at 8fc9756 — README.md "Grounding" and "Model Fine-tuning", inference/trans_infer_cli.py,
glmv_reward/ — and transformers' docs/source/en/model_doc/glm4v.md):

- Reasoning first, in `<think>…</think>`; it is measured (`ParsedAnswer.reasoning_chars`) and never
  searched for the verdict. A chat template may open the block in the prompt, so a lone `</think>`
  ends it too; a `<think>` that never closes (max tokens reached while thinking) leaves no answer.
  vLLM and SGLang with `--reasoning-parser glm45` move it out of the text into the message's
  `reasoning_content` (or `reasoning`) field: pass that as `reasoning`.
- GLM-4.1V-Thinking then puts the final answer in `<answer>…</answer>` (its CLI reads only that);
  GLM-4.5V and GLM-4.6V drop those tags and answer right after `</think>` (the README's fine-tuning
  note). vLLM and SGLang think by default; `chat_template_kwargs: {enable_thinking: false}` turns it
  off (the README), and the answer comes alone or after an empty think block.
- `<|begin_of_box|>…<|end_of_box|>` marks the "boxed" part of an answer: either a final value (the
  reward code boxes `42`; our JSON may come boxed the same way) or, for grounding, coordinates
  `[x1,y1,x2,y2]` of the top-left and bottom-right corners normalised by the image's width and height
  to 0–1000, in brackets whose style varies (`[]`, `[[]]`, `()`, `<>`), several boxes in one pair or
  one pair each. `to_result` maps them to the sample's pixels. These markers are special tokens:
  decoding with `skip_special_tokens=True` (transformers' example) drops them, GLM-V's CLI keeps them.
- JSON in ``` code fences (GLM-V's grounding outputs label/`bbox_2d` lists that way): fenced blocks
  are tried first. A verdict's own `boxes` use the same `{"label", "bbox_2d"}` shape and grid.

The time spent thinking reaches the verdict as `BackendResult.reasoning_tokens` and `thinking_ms`,
which the backends fill (they know tokens and time; this module sees only text): docs/backends.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StrictStr, ValidationError, model_validator

from cloud.convert import BackendResult, Box, CloudDetection, RuleAnswer, RuleMatchName, SampleInput

AnswerDecision = Literal["confirmed", "rejected", "unsure"]
ANSWER_DECISIONS: tuple[AnswerDecision, ...] = ("confirmed", "rejected", "unsure")

DEFAULT_QUESTION = "Does the image show what the edge detected (or any object if it detected none)?"
# Placeholders: {detections}, {reason}, {question}. Short on purpose: every token costs on a small model.
DEFAULT_TEMPLATE = "Edge: {detections}\nMined: {reason}\n{question}\nJSON: decision, labels, confidence, description"
# How the rules a sample asks follow the question (one line each: "[id] text" after this header).
RULES_HEADER = "Rules: answer each in rules (id, match matched/not_matched/unsure, reason)"
# What the model sees when the edge reported no object (motion without detection, audits).
NO_DETECTIONS = "none"
# Raw text kept in an unsure verdict when the answer could not be parsed (verdicts are no log files).
MAX_RAW_TEXT = 500
# GLM-V's grounding grid: coordinates are fractions of the image's width and height times 1000.
GRID = 1000.0
BOX_BEGIN, BOX_END = "<|begin_of_box|>", "<|end_of_box|>"
THINK_BEGIN, THINK_END = "<think>", "</think>"
ANSWER_BEGIN, ANSWER_END = "<answer>", "</answer>"

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_MARKED = re.compile(re.escape(BOX_BEGIN) + r"(.*?)" + re.escape(BOX_END), re.DOTALL)
_COORDINATES = re.compile(r"[\s\[\]()<>,0-9.+-]+")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
GridBox = tuple[float, float, float, float]


def _decision_name(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _clean_labels(value: object) -> object:
    if isinstance(value, list) and all(isinstance(label, str) for label in value):
        return [label.strip() for label in value if label.strip()]
    return value


class GroundedBox(BaseModel):
    """One object the model located: its label (may be empty) and `bbox_2d` on GLM-V's 0-1000 grid."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    label: StrictStr = Field(default="", description="What the box holds; empty: the answer's first label.")
    bbox_2d: tuple[
        Annotated[float, Strict(), Field(ge=0.0, le=GRID, allow_inf_nan=False)],
        Annotated[float, Strict(), Field(ge=0.0, le=GRID, allow_inf_nan=False)],
        Annotated[float, Strict(), Field(ge=0.0, le=GRID, allow_inf_nan=False)],
        Annotated[float, Strict(), Field(ge=0.0, le=GRID, allow_inf_nan=False)],
    ] = Field(description="x1, y1, x2, y2 of the top-left and bottom-right corners, each 0-1000 of the image.")

    @model_validator(mode="after")
    def _corners_in_order(self) -> GroundedBox:
        x1, y1, x2, y2 = self.bbox_2d
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"bbox_2d {list(self.bbox_2d)} is not top-left then bottom-right")
        return self


def _match_name(value: object) -> object:
    """A rule's match as models write it: matched/not_matched/unsure, or yes/no, or true/false."""
    if isinstance(value, bool):
        return "matched" if value else "not_matched"
    if isinstance(value, str):
        name = value.strip().lower().replace(" ", "_").replace("-", "_")
        return {"yes": "matched", "match": "matched", "no": "not_matched", "no_match": "not_matched"}.get(name, name)
    return value


class RuleVerdict(BaseModel):
    """The answer to one watch rule the prompt listed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: StrictStr = Field(description="The rule's id as the prompt gave it.")
    match: Annotated[RuleMatchName, BeforeValidator(_match_name)] = Field(
        description="matched: the image shows what the rule says; not_matched: it does not; unsure: cannot tell."
    )
    reason: StrictStr = Field(default="", description="A few words on why.")


class VerdictAnswer(BaseModel):
    """The answer object a model must give: what is validated, and the schema structured output asks for."""

    model_config = ConfigDict(extra="ignore", frozen=True, title="edgeglm_verdict")

    decision: Annotated[AnswerDecision, BeforeValidator(_decision_name)] = Field(
        description="confirmed: the image shows a claimed label (any object if none was claimed); rejected: it "
        "does not; unsure: cannot tell."
    )
    labels: Annotated[list[StrictStr], BeforeValidator(_clean_labels)] = Field(
        default_factory=list, description="Labels of the objects the image shows."
    )
    confidence: Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)] = Field(
        description="Confidence in the decision, 0-1."
    )
    description: StrictStr = Field(default="", description="One line on what the image shows.")
    boxes: list[GroundedBox] = Field(default_factory=list, description="Where the labelled objects are, if located.")
    rules: list[RuleVerdict] = Field(default_factory=list, description="One answer per rule the prompt listed.")


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """A model's answer, validated: the decision, the labels it saw, its confidence (0-1), one line of text.

    `boxes` are where it located objects (label, 0-1000 grid box); `reasoning_chars` is how much it
    wrote while thinking (0 with thinking off).
    """

    decision: AnswerDecision
    labels: tuple[str, ...]
    confidence: float
    description: str
    boxes: tuple[tuple[str, GridBox], ...] = ()
    reasoning_chars: int = 0
    rules: tuple[RuleAnswer, ...] = ()


@dataclass(frozen=True, slots=True)
class AnswerParts:
    """A model's output split the GLM-V way: its reasoning, and the final answer text (box markers kept)."""

    reasoning: str
    final: str
    thinking_unfinished: bool = False


def format_detections(detections: Sequence[tuple[str, float]]) -> str:
    """The edge's claims as prompt text: 'cat 0.62, person 0.31', or 'none'."""
    if not detections:
        return NO_DETECTIONS
    return ", ".join(f"{label} {score:.2f}" for label, score in detections)


def format_prompt(
    detections: Sequence[tuple[str, float]],
    reason: str,
    question: str,
    template: str | None = None,
    rules: Sequence[tuple[str, str]] = (),
) -> str:
    """The user text from plain values (what training uses; `build_prompt` calls it for a sample).

    `rules` ((id, text) pairs) follow under `RULES_HEADER`, one line each; without rules the text is
    exactly the template's.
    """
    text = (template or DEFAULT_TEMPLATE).format(
        detections=format_detections(detections), reason=reason, question=question
    )
    if rules:
        text += "\n" + RULES_HEADER + "".join(f"\n[{rule_id}] {words}" for rule_id, words in rules)
    return text


def build_prompt(sample: SampleInput, question: str, template: str | None = None) -> str:
    """The user text for `sample`: the edge's detections (label and score), why it was mined, the question,
    and the watch rules it asks."""
    claims = [(d.label, d.score) for d in sample.detections]
    rules = [(rule.rule_id, rule.text) for rule in sample.rules]
    return format_prompt(claims, sample.mined_reason, question, template, rules)


def format_answer(answer: ParsedAnswer) -> str:
    """The canonical JSON text of an answer (the form the world GLM is trained to write); rules only when asked."""
    body: dict[str, Any] = {
        "decision": answer.decision,
        "labels": list(answer.labels),
        "confidence": round(answer.confidence, 2),
        "description": answer.description,
    }
    if answer.rules:
        body["rules"] = [{"id": a.rule_id, "match": a.match, "reason": a.reason} for a in answer.rules]
    return json.dumps(body, ensure_ascii=False)


def answer_schema() -> dict[str, Any]:
    """The JSON schema of `VerdictAnswer`, for `response_format: {type: json_schema}`."""
    return VerdictAnswer.model_json_schema()


def split_answer(text: str) -> AnswerParts:
    """`text` split into reasoning (`<think>…</think>`) and final answer (inside `<answer>…</answer>` if any)."""
    reasoning, final, unfinished = "", text, False
    end = text.find(THINK_END)
    if end != -1:  # the block may have been opened by the prompt, so its end alone is enough
        begin = text.find(THINK_BEGIN, 0, end)
        reasoning = text[begin + len(THINK_BEGIN) if begin != -1 else 0 : end]
        final = text[end + len(THINK_END) :]
    else:
        begin = text.find(THINK_BEGIN)
        if begin != -1:  # still thinking when the tokens ran out: there is no answer to read
            reasoning, final, unfinished = text[begin + len(THINK_BEGIN) :], "", True
    start = final.find(ANSWER_BEGIN)
    if start != -1:
        stop = final.find(ANSWER_END, start)
        final = final[start + len(ANSWER_BEGIN) : stop if stop != -1 else len(final)]
    return AnswerParts(reasoning.strip(), final.strip(), unfinished)


def parse_answer(text: str, reasoning: str = "") -> ParsedAnswer | None:
    """The first valid answer object in `text`'s final answer; None if there is none.

    Reasoning, `<answer>` tags, box markers, code fences, prose and junk around the object are
    skipped; boxes marked in the text join the object's own. `reasoning` is the thinking a server
    returned apart from the text (counted, not searched).
    """
    parts = split_answer(text)
    marked = _marked_boxes(parts.final)
    unmarked = parts.final.replace(BOX_BEGIN, "").replace(BOX_END, "")
    for candidate in [*_FENCE.findall(unmarked), unmarked]:
        found = _first_valid_object(candidate)
        if found is not None:
            return _parsed(found, marked, len(parts.reasoning) + len(reasoning.strip()))
    return None


def parse_structured(text: str, reasoning: str = "") -> tuple[ParsedAnswer | None, str]:
    """A structured-output answer: the final answer must be one `VerdictAnswer` object and nothing else.

    Returns the answer, or None and what is wrong with it (for the unsure verdict's text).
    """
    parts = split_answer(text)
    if parts.thinking_unfinished:
        return None, "the model was still thinking when max_tokens ran out"
    try:
        answer = VerdictAnswer.model_validate_json(parts.final)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in err.errors())
        return None, f"not the verdict schema ({problems})"
    return _parsed(answer, (), len(parts.reasoning) + len(reasoning.strip())), ""


def _first_valid_object(text: str) -> VerdictAnswer | None:
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            try:
                return VerdictAnswer.model_validate(value)
            except ValidationError:
                pass  # not the verdict (an example, a grounding entry): look further
        start = text.find("{", start + 1)
    return None


def _marked_boxes(text: str) -> tuple[tuple[str, GridBox], ...]:
    """Boxes between box markers whose content is only coordinates, in groups of four, on the grid."""
    boxes: list[tuple[str, GridBox]] = []
    for content in _MARKED.findall(text):
        if not _COORDINATES.fullmatch(content):
            continue  # a boxed value (a word, our JSON), not a place
        numbers = [float(n) for n in _NUMBER.findall(content)]
        if not numbers or len(numbers) % 4:
            continue
        for i in range(0, len(numbers), 4):
            try:
                box = GroundedBox(bbox_2d=(numbers[i], numbers[i + 1], numbers[i + 2], numbers[i + 3]))
            except ValidationError:
                continue
            boxes.append(("", box.bbox_2d))
    return tuple(boxes)


def _parsed(answer: VerdictAnswer, marked: tuple[tuple[str, GridBox], ...], reasoning_chars: int) -> ParsedAnswer:
    own = tuple((box.label.strip(), box.bbox_2d) for box in answer.boxes)
    return ParsedAnswer(
        decision=answer.decision,
        labels=tuple(answer.labels),
        confidence=float(answer.confidence),
        description=" ".join(answer.description.split()),
        boxes=own + marked,
        reasoning_chars=reasoning_chars,
        rules=tuple(RuleAnswer(rule.id.strip(), rule.match, " ".join(rule.reason.split())) for rule in answer.rules),
    )


def to_result(parsed: ParsedAnswer | None, raw_text: str, sample: SampleInput, why: str = "") -> BackendResult:
    """A verdict from a parsed answer; an unparsable one is "unsure" and keeps (the start of) the raw text.

    Boxes: a confirmed answer that located objects returns those boxes, mapped from the 0-1000 grid
    to the sample's image and then to original-frame pixels, scored with the answer's confidence;
    one that did not returns the edge's detections of the labels the model saw (all of them when its
    labels are empty). Other answers return none. `why` says what was wrong with an unparsable one.
    """
    if parsed is None:
        reason = f" ({why})" if why else ""
        return BackendResult("unsure", [], f"unparsable answer: {raw_text[:MAX_RAW_TEXT]!r}{reason}", 0.0)
    detections: list[CloudDetection] = []
    if parsed.decision == "confirmed" and parsed.boxes:
        detections = [_grounded(label, box, parsed, sample) for label, box in parsed.boxes]
    elif parsed.decision == "confirmed":
        seen = set(parsed.labels)
        detections = [d for d in sample.detections if not seen or d.label in seen]
    return BackendResult(parsed.decision, detections, parsed.description, parsed.confidence, parsed.rules)


def grid_to_frame(box: GridBox, sample: SampleInput) -> Box:
    """A 0-1000 grid box of the sample's image in original-frame pixels."""
    height, width = int(sample.image.shape[0]), int(sample.image.shape[1])
    x1, y1, x2, y2 = box
    in_image = (x1 * width / GRID, y1 * height / GRID, x2 * width / GRID, y2 * height / GRID)
    return sample.region.to_frame(in_image)


def _grounded(label: str, box: GridBox, parsed: ParsedAnswer, sample: SampleInput) -> CloudDetection:
    # An unlabelled box holds the answer's (first) label, else the edge's; the class id is the edge's
    # for that label (the edge model's label set is the only one a verdict is compared against).
    name = label or (parsed.labels[0] if parsed.labels else "") or next((d.label for d in sample.detections), "object")
    class_id = next((d.class_id for d in sample.detections if d.label == name), 0)
    return CloudDetection(name, class_id, parsed.confidence, grid_to_frame(box, sample))
