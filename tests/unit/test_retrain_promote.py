"""The promotion rule of `train-edge` and the report it writes (cloud/retrain/promote.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud.retrain import Comparison, Evaluation, PromotionRule, RetrainConfig, RetrainReport, decide, write_report


def scored(split: str, map50: float | None, map50_95: float | None = None, images: int = 40) -> Evaluation:
    """An evaluation as sim.eval.detector's JSON gives it."""
    detail = {
        "model": f"{split}.onnx",
        "split": split,
        "dataset": f"/data/{split}",
        "images": images,
        "map50": map50,
        "map50_95": map50_95 if map50_95 is not None else map50,
        "per_class": {"cat": {"map50": map50, "map50_95": map50_95, "instances": 3}},
    }
    return Evaluation.from_json(detail)


def comparison(field: tuple[float, float], base: tuple[float, float], field_images: int = 40) -> Comparison:
    """(current, candidate) scores on the field split and on the base split."""
    return Comparison(
        current_field=scored("val", field[0], images=field_images),
        candidate_field=scored("val", field[1], images=field_images),
        current_base=scored("test", base[0]),
        candidate_base=scored("test", base[1]),
    )


RULE = PromotionRule(metric="map50", min_field_gain=0.0, max_base_drop=0.02)


def test_a_candidate_better_on_the_field_and_as_good_on_the_base_is_promoted() -> None:
    decision = decide(RULE, comparison(field=(0.40, 0.55), base=(0.74, 0.74)))
    assert decision.promote
    assert decision.field_gain == 0.15
    assert decision.base_change == 0.0
    assert len(decision.reasons) == 1 and "better on the field split" in decision.reasons[0]


def test_a_candidate_worse_on_the_base_beyond_the_bound_is_refused_however_good_on_the_field() -> None:
    decision = decide(RULE, comparison(field=(0.40, 0.90), base=(0.74, 0.71)))
    assert not decision.promote
    assert decision.base_change == -0.03
    assert decision.reasons == (
        "worse on the base split beyond the bound: map50 0.71 vs current 0.74 (change -0.0300, bound -0.0200)",
    )


def test_a_drop_on_the_base_exactly_at_the_bound_is_allowed() -> None:
    # 0.74 - 0.72 is 0.020000000000000018 in floating point: the rule compares rounded scores.
    decision = decide(RULE, comparison(field=(0.40, 0.45), base=(0.74, 0.72)))
    assert decision.promote
    assert decision.base_change == -0.02


@pytest.mark.parametrize("candidate_field", [0.40, 0.39])
def test_a_candidate_not_better_on_the_field_is_refused(candidate_field: float) -> None:
    decision = decide(RULE, comparison(field=(0.40, candidate_field), base=(0.74, 0.80)))
    assert not decision.promote
    assert len(decision.reasons) == 1
    assert decision.reasons[0].startswith(f"not better on the field split: map50 {candidate_field} vs current 0.4")


def test_a_field_gain_within_the_required_margin_is_refused() -> None:
    rule = PromotionRule(min_field_gain=0.05)
    assert not decide(rule, comparison(field=(0.40, 0.45), base=(0.74, 0.74))).promote
    assert decide(rule, comparison(field=(0.40, 0.4501), base=(0.74, 0.74))).promote


def test_every_failed_check_is_named() -> None:
    decision = decide(RULE, comparison(field=(0.50, 0.30), base=(0.74, 0.50)))
    assert not decision.promote
    assert [reason.split(":")[0] for reason in decision.reasons] == [
        "not better on the field split",
        "worse on the base split beyond the bound",
    ]


def test_the_rule_compares_the_configured_metric() -> None:
    both = Comparison(
        current_field=scored("val", 0.50, 0.20),
        candidate_field=scored("val", 0.45, 0.30),
        current_base=scored("test", 0.74, 0.57),
        candidate_base=scored("test", 0.74, 0.57),
    )
    assert not decide(PromotionRule(metric="map50"), both).promote
    assert decide(PromotionRule(metric="map50_95"), both).promote


def test_too_few_held_out_field_images_or_no_labels_refuses() -> None:
    few = decide(PromotionRule(min_field_images=20), comparison(field=(0.40, 0.60), base=(0.74, 0.74), field_images=5))
    assert not few.promote
    assert "has 5 images, fewer than min_field_images 20" in few.reasons[0]
    unlabelled = Comparison(
        current_field=scored("val", None),
        candidate_field=scored("val", None),
        current_base=scored("test", 0.74),
        candidate_base=scored("test", 0.74),
    )
    refused = decide(RULE, unlabelled)
    assert not refused.promote
    assert refused.field_gain is None
    assert refused.reasons == ("no map50 on the field split (it holds no labelled object)",)


def test_the_settings_refuse_what_is_out_of_bounds() -> None:
    with pytest.raises(ValidationError, match="max_base_drop"):
        RetrainConfig.model_validate({"rule": {"max_base_drop": -0.1}})
    with pytest.raises(ValidationError, match="metric"):
        RetrainConfig.model_validate({"rule": {"metric": "accuracy"}})
    with pytest.raises(ValidationError, match="extra"):
        RetrainConfig.model_validate({"fine_tune": {"epoch": 3}})


def test_the_report_holds_the_decision_both_evaluations_and_the_training_summary(tmp_path: Path) -> None:
    compared = comparison(field=(0.40, 0.55), base=(0.74, 0.73))
    decision = decide(RULE, compared)
    report = RetrainReport(
        rule=RULE,
        comparison=compared,
        decision=decision,
        current={"path": "edge.onnx", "version": "v1"},
        candidate={"path": "candidate.onnx", "sha256": "ab" * 32},
        training={"field_images": 12, "base_images": 200},
        timings_s={"fine_tune": 95.04, "export": 3.0},
        published={"uri": "edgeglm://edge/v2", "sha256": "ab" * 32},
    )
    json_path, md_path = write_report(report, tmp_path / "run")
    written = json.loads(json_path.read_text())
    assert written["decision"] == {
        "promote": True,
        "reasons": list(decision.reasons),
        "field_gain": 0.15,
        "base_change": -0.01,
    }
    assert written["rule"] == {"metric": "map50", "min_field_gain": 0.0, "max_base_drop": 0.02, "min_field_images": 1}
    assert written["evaluations"]["field"]["candidate"]["map50"] == 0.55
    assert written["evaluations"]["base"]["current"]["map50"] == 0.74
    assert written["training"] == {"field_images": 12, "base_images": 200}
    assert written["timings_s"] == {"fine_tune": 95.0, "export": 3.0}
    assert written["published"]["uri"] == "edgeglm://edge/v2"
    text = md_path.read_text()
    assert "Candidate **promoted**" in text
    assert "| field (held out) | 40 | 0.4000 | 0.5500 |" in text
    assert "| base | 40 | 0.7400 | 0.7300 |" in text
    assert "Published as edgeglm://edge/v2" in text


def test_the_manifest_metrics_carry_both_splits_of_both_models() -> None:
    compared = comparison(field=(0.40, 0.55), base=(0.74, 0.73))
    report = RetrainReport(RULE, compared, decide(RULE, compared), {}, {}, {}, {})
    metrics = report.metrics()
    assert {"field_current", "field_candidate", "base_current", "base_candidate"} <= set(metrics)
    assert metrics["field_candidate"]["map50"] == 0.55
    assert metrics["base_current"]["images"] == 40
    assert metrics["field_gain"] == 0.15
    json.dumps(metrics)  # a manifest holds JSON only
