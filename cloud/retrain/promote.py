"""The promotion rule and the report of one `train-edge` run.

A candidate replaces the current edge model only when it does better on the held-out field split
(what the fleet got wrong lately) and no worse, within a bound, on the base split (the world's test
split: what the model already knew). Both are judged on the same images, through the edge runtime,
with the same metric; the decision names every check that failed, so a refusal says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.retrain.config import Metric, PromotionRule

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


@dataclass(frozen=True)
class Evaluation:
    """One model's scores on one split: the JSON `sim.eval.detector` writes, kept whole for the report."""

    model: str
    split: str
    images: int
    map50: float | None
    map50_95: float | None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, report: dict[str, Any]) -> Evaluation:
        """From `EvalResult.as_json(...)`."""
        return cls(
            model=str(report["model"]),
            split=str(report["split"]),
            images=int(report["images"]),
            map50=report["map50"],
            map50_95=report["map50_95"],
            detail=report,
        )

    def score(self, metric: Metric) -> float | None:
        """The score the rule compares (None when the split had no labelled object)."""
        return self.map50 if metric == "map50" else self.map50_95


@dataclass(frozen=True)
class Comparison:
    """Current and candidate model, each on the held-out field split and on the base split."""

    current_field: Evaluation
    candidate_field: Evaluation
    current_base: Evaluation
    candidate_base: Evaluation

    def to_json(self) -> dict[str, Any]:
        """Every evaluation in full."""
        return {
            "field": {"current": self.current_field.detail, "candidate": self.candidate_field.detail},
            "base": {"current": self.current_base.detail, "candidate": self.candidate_base.detail},
        }


@dataclass(frozen=True)
class Decision:
    """Promote or not, and why: one reason per failed check, or the one that promoted it."""

    promote: bool
    reasons: tuple[str, ...]
    field_gain: float | None
    base_change: float | None

    def to_json(self) -> dict[str, Any]:
        """The decision as JSON."""
        return {
            "promote": self.promote,
            "reasons": list(self.reasons),
            "field_gain": self.field_gain,
            "base_change": self.base_change,
        }


def _difference(candidate: float | None, current: float | None) -> float | None:
    # Scores come rounded to 4 decimals; so does their difference, or 0.7 - 0.6 > 0.1 would decide.
    return None if candidate is None or current is None else round(candidate - current, 4)


def decide(rule: PromotionRule, comparison: Comparison) -> Decision:
    """Apply `rule`: better on the field split by more than `min_field_gain`, and at most `max_base_drop`
    worse on the base split."""
    metric = rule.metric
    field_gain = _difference(comparison.candidate_field.score(metric), comparison.current_field.score(metric))
    base_change = _difference(comparison.candidate_base.score(metric), comparison.current_base.score(metric))
    failed: list[str] = []
    field_images = comparison.candidate_field.images
    if field_images < rule.min_field_images:
        failed.append(
            f"the held-out field split has {field_images} images, fewer than min_field_images {rule.min_field_images}"
        )
    if field_gain is None:
        failed.append(f"no {metric} on the field split (it holds no labelled object)")
    elif field_gain <= rule.min_field_gain:
        failed.append(
            f"not better on the field split: {metric} {comparison.candidate_field.score(metric)} vs current "
            f"{comparison.current_field.score(metric)} (gain {field_gain:+.4f}, must exceed {rule.min_field_gain:+.4f})"
        )
    if base_change is None:
        failed.append(f"no {metric} on the base split (it holds no labelled object)")
    elif base_change < -rule.max_base_drop:
        failed.append(
            f"worse on the base split beyond the bound: {metric} {comparison.candidate_base.score(metric)} vs current "
            f"{comparison.current_base.score(metric)} (change {base_change:+.4f}, bound -{rule.max_base_drop:.4f})"
        )
    if failed:
        return Decision(False, tuple(failed), field_gain, base_change)
    assert field_gain is not None and base_change is not None
    reason = (
        f"better on the field split ({metric} {field_gain:+.4f}) and within the bound on the base split "
        f"({base_change:+.4f}, bound -{rule.max_base_drop:.4f})"
    )
    return Decision(True, (reason,), field_gain, base_change)


@dataclass
class RetrainReport:
    """What one `train-edge` run did and decided; written as report.json and report.md."""

    rule: PromotionRule
    comparison: Comparison
    decision: Decision
    current: dict[str, Any]
    candidate: dict[str, Any]
    training: dict[str, Any]
    timings_s: dict[str, float]
    published: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON."""
        return {
            "decision": self.decision.to_json(),
            "rule": self.rule.model_dump(mode="json"),
            "current": self.current,
            "candidate": self.candidate,
            "evaluations": self.comparison.to_json(),
            "training": self.training,
            "timings_s": {name: round(seconds, 1) for name, seconds in self.timings_s.items()},
            "published": self.published,
        }

    def metrics(self) -> dict[str, Any]:
        """What a promoted model's manifest carries as its metrics: both splits, both models' scores."""
        evaluations = self.comparison.to_json()
        return {
            "rule": self.rule.model_dump(mode="json"),
            "field_gain": self.decision.field_gain,
            "base_change": self.decision.base_change,
            **{
                f"{split}_{who}": _summary(evaluations[split][who])
                for split in ("field", "base")
                for who in evaluations[split]
            },
        }


def _summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    keys = ("split", "dataset", "images", "map50", "map50_95", "per_class")
    return {key: evaluation[key] for key in keys if key in evaluation}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(report: RetrainReport) -> str:
    """A short human summary of the report."""
    comparison, decision, rule = report.comparison, report.decision, report.rule
    verdict = "**promoted**" if decision.promote else "**not promoted**"
    lines = [
        "# train-edge report",
        "",
        f"Candidate {verdict}. Rule: {rule.metric} on the field split must gain more than "
        f"{rule.min_field_gain:.4f}; on the base split it may drop at most {rule.max_base_drop:.4f}.",
        "",
        *[f"- {reason}" for reason in decision.reasons],
        "",
        "| split | images | current mAP50 | candidate mAP50 | current mAP50-95 | candidate mAP50-95 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, current, candidate in (
        ("field (held out)", comparison.current_field, comparison.candidate_field),
        ("base", comparison.current_base, comparison.candidate_base),
    ):
        lines.append(
            f"| {name} | {candidate.images} | {_fmt(current.map50)} | {_fmt(candidate.map50)} | "
            f"{_fmt(current.map50_95)} | {_fmt(candidate.map50_95)} |"
        )
    lines += ["", f"Current model: {report.current.get('path')} (version {report.current.get('version') or '-'})."]
    lines.append(f"Candidate: {report.candidate.get('path')}.")
    if report.timings_s:
        timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.timings_s.items())
        lines.append(f"Wall times: {timings}.")
    if report.published:
        lines.append(f"Published as {report.published.get('uri')} (sha256 {report.published.get('sha256')}).")
    return "\n".join(lines) + "\n"


def write_report(report: RetrainReport, out: Path) -> tuple[Path, Path]:
    """report.json and report.md in `out`; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    json_path.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
