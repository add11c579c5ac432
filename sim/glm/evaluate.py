"""Held-out evaluation of a GLM backend on world crops: the samples, and how answers are scored.

The samples are crops of the world dataset's *test* split (frames never used in training), each with
an edge claim drawn from a seed, wrapped as the cloud sees them (`SampleInput`). They are asked
through the real `glm` backend, so the figures are those of the serving path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cloud.backends.glm import GlmBackend
from cloud.backends.glm_inputs import BadImageError
from cloud.backends.verdict_text import ParsedAnswer, parse_answer
from cloud.convert import CloudDetection, SampleInput
from protos.reasons import MinedReasonName
from sim.glm.crops import NOTHING, Crop, draw_claim, frame_crops, true_answer
from sim.world.photos import CLASSES, Image

UNPARSABLE = "unparsable"


@dataclass(frozen=True)
class EvalCase:
    """One held-out sample with the answer it should get."""

    sample: SampleInput
    crop: Crop
    truth: ParsedAnswer
    claim_kind: str  # "right", "wrong" or "none": how the edge's claim relates to the crop


@dataclass
class Scores:
    """Counts over a set of answers; rates are computed from them."""

    total: int = 0
    parseable: int = 0
    decision_correct: int = 0
    label_correct: int = 0
    confusion: dict[str, Counter[str]] = field(default_factory=dict)
    by_claim: dict[str, list[int]] = field(default_factory=dict)  # kind -> [correct decisions, total]
    by_hardness: dict[str, list[int]] = field(default_factory=dict)

    def add(self, case: EvalCase, parsed: ParsedAnswer | None) -> None:
        """Score one answer against its case."""
        self.total += 1
        predicted = UNPARSABLE
        decision_ok = False
        if parsed is not None:
            self.parseable += 1
            predicted = parsed.labels[0] if parsed.labels else NOTHING
            decision_ok = parsed.decision == case.truth.decision
            self.decision_correct += decision_ok
            self.label_correct += set(parsed.labels) == set(case.truth.labels)
        self.confusion.setdefault(case.crop.label, Counter())[predicted] += 1
        for table, key in ((self.by_claim, case.claim_kind), (self.by_hardness, "hard" if case.crop.hard else "easy")):
            cell = table.setdefault(key, [0, 0])
            cell[0] += decision_ok
            cell[1] += 1

    def summary(self) -> dict[str, object]:
        """Rates and tables, JSON-ready."""
        total = max(1, self.total)
        return {
            "samples": self.total,
            "parseable_json_rate": round(self.parseable / total, 4),
            "decision_accuracy": round(self.decision_correct / total, 4),
            "label_accuracy": round(self.label_correct / total, 4),
            "decision_accuracy_by_claim": {k: round(c / max(1, n), 4) for k, (c, n) in sorted(self.by_claim.items())},
            "decision_accuracy_by_hardness": {
                k: round(c / max(1, n), 4) for k, (c, n) in sorted(self.by_hardness.items())
            },
            "confusion": {truth: dict(sorted(row.items())) for truth, row in sorted(self.confusion.items())},
        }


def held_out_cases(frames: int, seed: int = 0, claim_seed: int = 1234) -> list[EvalCase]:
    """Crops of test-split frames 0..frames-1, each with a seeded edge claim."""
    rng = np.random.default_rng([claim_seed, frames])
    crops = list(frame_crops("test", frames, seed, rng))
    return [case_for(crop, index, rng) for index, crop in enumerate(crops)]


def world_sample(
    image: Image,
    detections: tuple[CloudDetection, ...],
    sample_id: str,
    frame_seq: int,
    reason: MinedReasonName = "uncertainty_band",
) -> SampleInput:
    """What the cloud gets when an edge asks about `image` (the whole of it, no crop) with these claims."""
    height, width = image.shape[:2]
    return SampleInput(
        sample_id=sample_id,
        edge_id="eval",
        camera_id="world",
        frame_seq=frame_seq,
        captured_at=0.0,
        image=image,
        crop=None,
        frame_size=(width, height),
        detections=detections,
        mined_reason=reason,
        priority=0.5,
        trace_id="",
    )


def case_for(crop: Crop, index: int, rng: np.random.Generator) -> EvalCase:
    """The sample the cloud would get for `crop`, with a drawn claim and the answer it should get."""
    claim = draw_claim(crop.label, rng)
    height, width = crop.image.shape[:2]
    box = (0.0, 0.0, float(width), float(height))
    detections = tuple(CloudDetection(label, CLASSES.index(label), score, box) for label, score in claim.detections)
    claimed = {d.label for d in detections}
    kind = "none" if not claimed else "right" if crop.label in claimed else "wrong"
    sample = world_sample(crop.image, detections, f"glm-eval-{index}", crop.frame, claim.reason)
    return EvalCase(sample, crop, true_answer(crop.label, crop.hard, claim), kind)


async def score(backend: GlmBackend, cases: list[EvalCase], batch_size: int) -> Scores:
    """Ask the backend about every case, `batch_size` at a time, and score the parsed answers."""
    scores = Scores()
    for first in range(0, len(cases), batch_size):
        chunk = cases[first : first + batch_size]
        answers = await backend.ask([case.sample for case in chunk])
        for case, answer in zip(chunk, answers, strict=True):
            scores.add(case, None if isinstance(answer, BadImageError) else parse_answer(answer.text))
    return scores
