"""What a drift scenario adds to a scenario file: a camera whose look changes, and the model loop after it.

`cameras[i].drift: {at_s, to}` makes a camera's clip change look at a second of the clip (the world
is otherwise the same). `retrain:` says when the harness turns the cloud's field dataset into a
candidate edge model (`edgeglm-cloud dataset export` then `train-edge`), or publishes a deliberately
bad one, and how the running cloud rolls it out (`POST /api/rollout`, canaries first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[2]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftSpec(_Section):
    """From `at_s` on, the camera's scene has another look; objects and ground truth stay as they were."""

    at_s: float = Field(..., ge=0.0, le=7_200.0, description="Second of the clip at which the look changes.")
    to: Literal["night", "infrared"] = Field(
        "infrared",
        description="night: the world's night camera (dark background, noisier); infrared: the camera's IR night "
        "mode (nearly monochrome, dark, noisy), which the edge model was not trained on.",
    )


class RolloutSpec(_Section):
    """cloud.yaml `models.rollout` of the run, and who the canaries are."""

    canaries: list[str] = Field(
        default_factory=list, description="Canary edge ids; empty: the edges with a drifting camera."
    )
    soak_s: float = Field(30.0, ge=0.0, le=3_600.0, description="Healthy canaries run it this long before the fleet.")
    min_samples: int = Field(10, ge=1, le=10_000, description="Judged canary samples before their health counts.")
    max_rejection_increase: float = Field(
        0.15, ge=0.0, le=1.0, description="Canary rejection rate above the baseline's by more: rolled back."
    )
    switch_timeout_s: float = Field(180.0, gt=0.0, le=3_600.0, description="A canary not running it by then fails.")
    check_every_s: float = Field(2.0, gt=0.0, le=60.0, description="How often the cloud judges the rollout.")


class RetrainSpec(_Section):
    """When the harness retrains (or publishes a bad candidate) during the edgeglm mode, and how it rolls out."""

    candidate: Literal["trained", "bad"] = Field(
        "trained",
        description="trained: `train-edge` on the field dataset, published only when its rule promotes it; bad: "
        "the current model with its class names rotated (what a fine-tune on consistently shuffled labels "
        "learns), published without the rule, to show the canary catching it.",
    )
    start_at_s: float = Field(
        ..., ge=1.0, le=7_200.0, description="Clip second (of the drifting camera) at which the dataset is exported."
    )
    min_field_images: int = Field(
        10, ge=1, le=100_000, description="Held-out field images needed; fewer: export again later."
    )
    give_up_at_s: float = Field(
        600.0, ge=1.0, le=7_200.0, description="Clip second after which no export is tried any more."
    )
    val_share: float = Field(0.25, gt=0.0, lt=1.0, description="dataset export --val-share.")
    group_s: float = Field(10.0, ge=1.0, le=3_600.0, description="dataset export --group-s.")
    epochs: int = Field(5, ge=1, le=100, description="train-edge --epochs.")
    base_images: int = Field(200, ge=0, le=10_000, description="train-edge --base-images.")
    field_repeat: int = Field(2, ge=1, le=100, description="train-edge --field-repeat.")
    lr0: float | None = Field(None, gt=0.0, le=1.0, description="train-edge --lr0 (unset: its default).")
    max_base_drop: float | None = Field(
        None, ge=0.0, le=1.0, description="train-edge --max-base-drop (unset: the rule's default)."
    )
    weights: Path = Field(ROOT / "sim" / "models" / "edge.pt", description="train-edge --weights.")
    base: Path = Field(
        ROOT / ".cache" / "world-seed0", description="train-edge --base: the world dataset the edge model knows."
    )
    train_python: Path = Field(ROOT / ".venv-train" / "bin" / "python", description="train-edge --train-python.")
    train_timeout_s: float = Field(1_800.0, gt=0.0, le=14_400.0, description="Deadline of the whole train-edge.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="The rollout's stages and canaries.")
