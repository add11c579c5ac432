"""Configuration of model updates (the `models` section of edge.yaml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ModelUpdateConfig(BaseModel):
    """Where fetched models are kept and what a new model must pass before it runs on camera frames."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Follow the model a policy names; false keeps the configured model.")
    dir: Path | None = Field(None, description="Folder of fetched models and their state; default: <state_dir>/models.")
    max_latency_ratio: float = Field(
        3.0,
        gt=1.0,
        le=100.0,
        description=(
            "Self-test bound: a new model is refused when its median time on the stored frames is more than this "
            "many times the running model's, measured side by side."
        ),
    )
    self_test_runs: int = Field(5, ge=1, le=100, description="Timed runs of each model on the stored frames.")
    download_timeout_s: float = Field(
        600.0, gt=0, le=86_400, description="Most one download attempt may take before it is cut and resumed later."
    )
    retry_initial_s: float = Field(2.0, gt=0, le=3600, description="First wait after a failed download attempt.")
    retry_max_s: float = Field(300.0, gt=0, le=86_400, description="Longest wait between download attempts.")
