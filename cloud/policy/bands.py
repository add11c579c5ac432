"""Where one class's uncertainty band should be: pure functions on (edge score, cloud decision) pairs.

The edge treats a detection of score s under band [low, high] as the miner does
(`edge/mine/base.py`, `edge/mine/miner.py`): s > high is accepted locally (an event on the edge),
low <= s <= high is sent to the cloud, which decides it correctly, s < low is dropped as noise.

Each pair is one object the edge reported and the cloud judged: its edge score, whether the cloud
confirmed it, and a weight (below). With W(.) the summed weight of the pairs matching a condition:

    recall(low)     = W(confirmed, s >= low) / W(confirmed)           objects the cloud would confirm
                                                                      that are not dropped
    precision(high) = W(confirmed, s > high) / W(s > high)            of the local accepts (1 if none)
    upload(low,high)= W(low <= s <= high) / W(all)                    share of objects sent up

The objective: the smallest upload such that recall >= target_recall and precision >= target_precision.
Recall depends on low only and precision on high only, so the optimum is found one bound at a time:
low is the highest threshold keeping recall >= target, high the lowest threshold whose local accepts
keep precision >= target; when low comes out above high, low = high (the band is a point: every
object not accepted is dropped, and recall only grows). A threshold sits halfway between two
consecutive distinct scores of the window (any value in that gap gives the same counts; the middle is
the one least sensitive to the next sample). `best_band` returns None when the window has no
confirmed object: recall is then undefined and the band is left where it is.

Weights correct a sampling bias. The cloud only sees the frames the edge sends: every frame with a
detection inside the band (or mined by another deterministic rule: watch list, IBT, ...) and, of the
others, a random share `random_audit_rate` (the audit is the miner's fallback, asked only when no
other rule fired). So an object's chance of being seen depends only on its frame's content and one
coin: 1 for a frame mined by a deterministic rule, `random_audit_rate` for an audited frame. Weighting
each pair by the inverse of that chance (Horvitz-Thompson: 1 for a band sample, 1 / audit rate for an
audit sample) gives unbiased estimates of the whole score distribution, outside the band too, and
keeps every band sample's information. The alternative (estimate from audit samples only) is also
unbiased but throws away most of the pairs: at a 1 % audit rate, 99 % of what the cloud judged.
The weighting stays right while the band moves, since each pair's weight is its own sampling chance.
What it does not correct: frames the edge suppressed (`resend_interval_s`, uplink budget drops) are
seen less often than their weight says, which under-counts band samples (shifting estimates
toward the audited scores); set `resend_interval_s: 0` where the loop must be exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import annotated_types

from cloud.convert import SampleInput, detection_from_pb
from cloud.policy.settings import Band
from common.boxes import iou
from protos import verdict_pb2

_EPS = 1e-9


def _band_bounds() -> tuple[float, float]:
    """Band's bounds in settings.py (lowest low, highest high), so the loop never proposes a band it would refuse."""
    floor = [cast(float, m.ge) for m in Band.model_fields["low"].metadata if isinstance(m, annotated_types.Ge)]
    ceiling = [cast(float, m.le) for m in Band.model_fields["high"].metadata if isinstance(m, annotated_types.Le)]
    if not floor or not ceiling:
        raise LookupError("Band.low needs a ge= bound and Band.high a le= bound")
    return floor[0], ceiling[0]


BAND_FLOOR, BAND_CEILING = _band_bounds()


@dataclass(frozen=True, slots=True)
class ScorePair:
    """One object: the edge's score, the cloud's decision, and the inverse of its chance to be seen."""

    score: float
    confirmed: bool
    weight: float = 1.0
    audit: bool = False
    observed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class BandEstimate:
    """What a band does on a window of pairs (weighted shares; recall None without confirmed objects)."""

    low: float
    high: float
    recall: float | None
    precision: float
    upload: float
    pairs: int
    audit_pairs: int
    confirmed_pairs: int

    def describe(self) -> str:
        """For logs and reasons: `[0.25, 0.60] recall 0.97 precision 0.99 upload 0.40`."""
        recall = "n/a" if self.recall is None else f"{self.recall:.3f}"
        return (
            f"[{self.low:.3f}, {self.high:.3f}] recall {recall} precision {self.precision:.3f} upload {self.upload:.3f}"
        )


@dataclass(frozen=True, slots=True)
class BandPlan:
    """The outcome of one evaluation of one class: the optimum, the band to publish (None: hold), and why."""

    current: BandEstimate
    target: tuple[float, float] | None
    proposed: BandEstimate | None
    why: str


def estimate(pairs: Iterable[ScorePair], low: float, high: float) -> BandEstimate:
    """Weighted recall, precision of local accepts and upload share of band [low, high] on `pairs`."""
    total = confirmed = confirmed_kept = accepted = accepted_confirmed = sent = 0.0
    count = audits = confirmed_count = 0
    for pair in pairs:
        w = pair.weight
        count += 1
        audits += pair.audit
        total += w
        if pair.confirmed:
            confirmed_count += 1
            confirmed += w
            if pair.score >= low:
                confirmed_kept += w
        if pair.score > high:
            accepted += w
            accepted_confirmed += w if pair.confirmed else 0.0
        elif pair.score >= low:
            sent += w
    return BandEstimate(
        low=low,
        high=high,
        recall=confirmed_kept / confirmed if confirmed > 0 else None,
        precision=accepted_confirmed / accepted if accepted > 0 else 1.0,
        upload=sent / total if total > 0 else 0.0,
        pairs=count,
        audit_pairs=audits,
        confirmed_pairs=confirmed_count,
    )


def _gap_below(scores: Sequence[float], index: int) -> float:
    """Halfway between scores[index] and the next lower distinct score (or the band's floor when there is none)."""
    value = scores[index]
    below = index - 1
    while below >= 0 and scores[below] == value:
        below -= 1
    return (value + (scores[below] if below >= 0 else BAND_FLOOR)) / 2


def best_band(pairs: Iterable[ScorePair], target_recall: float, target_precision: float) -> tuple[float, float] | None:
    """The optimum of the module docstring's objective as (low, high), within Band's bounds; None if undecidable."""
    ordered = sorted(pairs, key=lambda pair: pair.score)
    scores = [pair.score for pair in ordered]
    total_confirmed = sum(pair.weight for pair in ordered if pair.confirmed)
    if total_confirmed <= 0:
        return None
    needed = target_recall * total_confirmed * (1 - _EPS)
    kept = 0.0
    low = BAND_FLOOR
    for index in range(len(ordered) - 1, -1, -1):
        if ordered[index].confirmed:
            kept += ordered[index].weight
            if kept >= needed:
                low = _gap_below(scores, index)
                break
    high = BAND_CEILING
    above = above_confirmed = 0.0
    index = len(ordered) - 1
    while index >= 0:
        value = scores[index]
        while index >= 0 and scores[index] == value:  # a threshold cannot split equal scores
            above += ordered[index].weight
            above_confirmed += ordered[index].weight if ordered[index].confirmed else 0.0
            index -= 1
        if above_confirmed >= target_precision * above * (1 - _EPS):
            high = _gap_below(scores, index + 1)
    low = min(max(low, BAND_FLOOR), BAND_CEILING)
    high = min(max(high, BAND_FLOOR), BAND_CEILING)
    return min(low, high), high


def plan_band(
    pairs: Sequence[ScorePair],
    current: tuple[float, float],
    *,
    target_recall: float,
    target_precision: float,
    hysteresis: float,
    min_pairs: int,
    min_audit_pairs: int,
) -> BandPlan:
    """Whether and where to move one class's band from `current`, with the reason (hysteresis, minimum counts)."""
    now = estimate(pairs, *current)
    if now.pairs < min_pairs:
        return BandPlan(now, None, None, f"{now.pairs} pairs < min_pairs {min_pairs}")
    if now.audit_pairs < min_audit_pairs:
        return BandPlan(now, None, None, f"{now.audit_pairs} audit pairs < min_audit_pairs {min_audit_pairs}")
    target = best_band(pairs, target_recall, target_precision)
    if target is None:
        return BandPlan(now, None, None, "no confirmed object in the window")
    low = target[0] if abs(target[0] - current[0]) > hysteresis else current[0]
    high = target[1] if abs(target[1] - current[1]) > hysteresis else current[1]
    low = min(low, high)  # a held low above a moved high follows it down (recall only grows)
    if (low, high) == tuple(current):
        return BandPlan(now, target, None, f"optimum [{target[0]:.3f}, {target[1]:.3f}] within hysteresis")
    after = estimate(pairs, low, high)
    why = f"{now.describe()} -> {after.describe()} on {now.pairs} pairs ({now.audit_pairs} audit)"
    return BandPlan(now, target, after, why)


def edge_decisions(sample: SampleInput, verdict: verdict_pb2.Verdict, match_iou: float) -> list[bool]:
    """Per detection of the edge, whether the cloud confirmed that object (for a confirmed or rejected verdict).

    Mirrors the detector-like backends' rule (cloud/backends/decide.py) per object: with boxes in the
    verdict, an edge box is confirmed by an object of its label at IoU >= `match_iou` (anywhere in the
    image when the sample is a crop); a verdict without boxes (a text-only model) judges the whole
    sample, so every detection takes its decision.
    """
    found = [detection_from_pb(d) for d in verdict.detections]
    if not found:
        return [verdict.decision == verdict_pb2.DECISION_CONFIRMED] * len(sample.detections)
    if sample.crop is not None:
        labels = {f.label for f in found}
        return [d.label in labels for d in sample.detections]
    return [any(f.label == d.label and iou(f.box, d.box) >= match_iou for f in found) for d in sample.detections]
