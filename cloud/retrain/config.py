"""Settings of `edgeglm-cloud train-edge`: how briefly to fine-tune, on what mix, and when to promote."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Metric = Literal["map50", "map50_95"]


class PromotionRule(BaseModel):
    """A candidate replaces the current model only when it is better on the field and no worse on the base."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Metric = Field("map50", description="The score compared: mAP at IoU 0.5, or averaged over 0.5..0.95.")
    min_field_gain: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="The candidate's field-split score must exceed the current model's by more than this.",
    )
    max_base_drop: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="The candidate's base-split score may fall below the current model's by at most this.",
    )
    min_field_images: int = Field(
        1, ge=1, le=1_000_000, description="Held-out field images needed before a comparison on them is trusted."
    )


class FineTuneSettings(BaseModel):
    """The brief fine-tune: epochs, the data mix, and the model input size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1, le=300, description="Epochs over the mixed training set.")
    imgsz: int = Field(320, ge=32, le=1280, multiple_of=32, description="Model input side (the edge model's: 320).")
    batch: int = Field(16, ge=1, le=256, description="Images per training step.")
    lr0: float = Field(
        0.0002,
        gt=0.0,
        le=1.0,
        description="Initial learning rate; low, so the fine-tune adapts rather than relearns (docs/retraining.md).",
    )
    base_images: int = Field(
        400,
        ge=0,
        le=100_000,
        description="Images drawn from the base set's training split, so the model keeps what it knew.",
    )
    field_repeat: int = Field(
        2, ge=1, le=100, description="Copies of each field training image in the mix (the field set is small)."
    )
    seed: int = Field(0, ge=0, description="Seed of the base sample and of training.")
    timeout_s: float = Field(
        3600.0, gt=0, le=86_400, description="Deadline of the fine-tune process (training and export together)."
    )


class RetrainConfig(BaseModel):
    """Everything `train-edge` decides with, besides where files are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fine_tune: FineTuneSettings = Field(default_factory=FineTuneSettings, description="The fine-tune.")
    rule: PromotionRule = Field(default_factory=PromotionRule, description="When a candidate is promoted.")
    base_split: Literal["val", "test"] = Field(
        "test", description="The base set's split both models are scored on (never trained on)."
    )
    eval_limit: int | None = Field(
        None, ge=1, description="Score at most this many images of each split (None: all of them)."
    )
