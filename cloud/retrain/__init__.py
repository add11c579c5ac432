"""Retraining the edge model on the field dataset: a brief fine-tune, a comparison with the current
model on held-out field images and on the world's test split, a promotion rule, and publication of a
promoted candidate into the signed model registry (`edgeglm-cloud train-edge`, docs/retraining.md)."""

from cloud.retrain.config import FineTuneSettings, PromotionRule, RetrainConfig
from cloud.retrain.promote import Comparison, Decision, Evaluation, RetrainReport, decide, write_report

__all__ = [
    "Comparison",
    "Decision",
    "Evaluation",
    "FineTuneSettings",
    "PromotionRule",
    "RetrainConfig",
    "RetrainReport",
    "decide",
    "write_report",
]
