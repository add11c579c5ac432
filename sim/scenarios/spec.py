"""What a scenario file says: the fleet, its links, the cloud, the policy and the modes to compare.

A scenario is one YAML file (`sim/scenarios/*.yaml`), read by `load_scenario`, which reports every
problem with its YAML path (`retail-4g.yaml: edges[0].link.loss: 0.9 is above the maximum 0.5`).
Each edge group becomes `count` real edge agent processes, each camera a generated clip played in
real time; every mode runs the same clips against a fresh cloud process.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.config import ConfigError, format_errors, read_yaml_mapping
from protos.policy_settings import MiningSettings
from sim.link.profile import LinkProfile, Outage
from sim.scenarios.drift_spec import DriftSpec, RetrainSpec

ModeName = Literal["cloud_only", "edge_only", "sedna_ibt", "random", "edgeglm"]
ALL_MODES: tuple[ModeName, ...] = ("cloud_only", "edge_only", "sedna_ibt", "random", "edgeglm")
SCENARIOS_DIR = Path(__file__).resolve().parent
MODELS_DIR = SCENARIOS_DIR.parent / "models"


def _mining_field(name: str) -> Any:
    """The policy contract's own definition of a mining field, so the harness cannot drift from it."""
    return copy.copy(MiningSettings.model_fields[name])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraSpec(_Section):
    """One camera's generated scene."""

    fps: float = Field(5.0, ge=0.5, le=30.0, description="Frames per second of the clip (played in real time).")
    mean_gap_seconds: float = Field(8.0, gt=0.0, le=600.0, description="Mean time between objects entering view.")
    small_fraction: float = Field(0.25, ge=0.0, le=1.0, description="Share of objects drawn small (hard).")
    night: bool = Field(False, description="Dark, noisy scene (hard).")
    quiet_start_seconds: float = Field(4.0, ge=0.0, le=600.0, description="Seconds with nothing in view at the start.")
    drift: DriftSpec | None = Field(None, description="The scene's look changes at a second of the clip.")


class EdgeGroup(_Section):
    """`count` edges alike: their cameras, transport and link."""

    name: str = Field(..., pattern=r"^[a-z0-9-]{1,24}$", description="Edge id prefix: edges are <name>-0, <name>-1 …")
    count: int = Field(1, ge=1, le=64, description="Edges in the group (each a real agent process).")
    cameras: list[CameraSpec] = Field(default_factory=lambda: [CameraSpec()], min_length=1, max_length=16)
    transport: Literal["grpc", "mqtt"] = Field("grpc", description="How the group's edges reach the cloud.")
    link: LinkProfile = Field(default_factory=LinkProfile, description="Each edge's own link (rate, delay, loss …).")


class CloudSpec(_Section):
    """The cloud every mode runs against."""

    backend: Literal["onnx", "glm", "oracle"] = Field("onnx", description="Which backend judges samples.")
    onnx_model: Path = Field(MODELS_DIR / "reference.onnx", description="Reference detector of the onnx backend.")
    glm_model: Path = Field(MODELS_DIR / "glm-world", description="Model folder of the glm backend.")
    oracle_delay_ms: float = Field(150.0, ge=0.0, le=60_000.0, description="Oracle: modelled inference time/batch.")
    oracle_jitter_ms: float = Field(50.0, ge=0.0, le=60_000.0, description="Oracle: uniform extra time per batch.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Dynamic batcher: most samples per batch.")
    max_queue_delay_ms: float = Field(20.0, ge=0.0, le=10_000.0, description="Dynamic batcher: longest wait to fill.")
    closed_loop: dict[str, Any] = Field(
        default_factory=lambda: {"enabled": True},
        description="policy.closed_loop settings of the cloud in the edgeglm mode (the other modes are static).",
    )


class PolicySpec(_Section):
    """The policy of the edgeglm mode (the baselines derive theirs from its thresholds)."""

    watch_list: list[str] = Field(default_factory=lambda: ["person", "motorcycle"], description="Always sent.")
    band_low: float = Field(0.25, ge=0.0, le=1.0, description="Starting uncertainty band, low end.")
    band_high: float = Field(0.6, ge=0.0, le=1.0, description="Starting band, high end: above it the edge is sure.")
    random_audit_rate: float = Field(0.02, ge=0.0, le=1.0, description="Audit share of detected frames.")
    resend_interval_s: float = Field(2.0, ge=0.0, le=600.0, description="Same camera, labels, reason: once per this.")
    watch_reask_interval_s: float = Field(
        0.0, ge=0.0, le=86_400.0, description="A confirmed watched object asks again after this (0 = never)."
    )
    image_mode: Literal["crop", "full_frame"] = Field("full_frame", description="What a sample carries.")
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of samples (and of cloud_only frames).")
    budget_bytes_per_s: int = Field(256 * 1024, ge=1024, le=1 << 30, description="Edge token-bucket rate.")


class BaselineSpec(_Section):
    """Settings of the comparison modes."""

    random_fraction: float = Field(0.05, gt=0.0, le=1.0, description="random: share of detected frames sent.")
    # sedna_ibt: default, bounds and meaning as the policy contract defines them (Sedna's defaults).
    ibt_box_score_threshold: float = _mining_field("ibt_box_score_threshold")
    ibt_image_fraction_threshold: float = _mining_field("ibt_image_fraction_threshold")
    local_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Baselines: score above which the edge is sure.")


class CostSpec(_Section):
    """Prices for the cost estimate per 1,000 frames."""

    gpu_hour_usd: float = Field(2.5, ge=0.0, le=1_000.0, description="Price of one GPU-hour of cloud inference.")
    uplink_gb_usd: float = Field(0.5, ge=0.0, le=1_000.0, description="Price of one GB sent up (cellular: ~0.5-5).")


class LightFleetSpec(_Section):
    """fleet-1000: lightweight simulated edges (no detector) against one cloud, for ingest capacity."""

    settings: dict[str, Any] = Field(
        default_factory=dict, description="sim.fleet.light_config.Fleet1000Config fields: `fleet` and `cloud`."
    )


class Scenario(_Section):
    """The whole scenario file."""

    name: str = Field(..., pattern=r"^[a-z0-9-]{1,40}$", description="Scenario name, used in the report.")
    description: str = Field("", max_length=2_000, description="One paragraph: what deployment this mirrors.")
    seed: int = Field(0, ge=0, description="World seed: the same seed gives the same clips in every mode.")
    duration_s: float = Field(60.0, ge=5.0, le=7_200.0, description="Length of every camera's clip.")
    link_mode: Literal["inproc", "netns"] = Field("inproc", description="How links are emulated.")
    edges: list[EdgeGroup] = Field(default_factory=list, description="The fleet.")
    cloud_outages: list[Outage] = Field(
        default_factory=list, description="Windows when no edge reaches the cloud (added to every edge's link)."
    )
    cloud: CloudSpec = Field(default_factory=CloudSpec, description="The cloud.")
    policy: PolicySpec = Field(default_factory=PolicySpec, description="The edgeglm mode's policy.")
    baselines: BaselineSpec = Field(default_factory=BaselineSpec, description="The comparison modes' settings.")
    modes: list[ModeName] = Field(default_factory=lambda: list(ALL_MODES), description="Modes to run, in order.")
    cost: CostSpec = Field(default_factory=CostSpec, description="Prices for the cost estimate.")
    light_fleet: LightFleetSpec | None = Field(
        None, description="Set for an ingest-capacity run of lightweight edges instead of agent processes."
    )
    retrain: RetrainSpec | None = Field(
        None, description="Drift scenarios: retrain and roll out a new edge model during the edgeglm mode."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [g.name for g in self.edges]
        if len(set(names)) != len(names):
            raise ValueError(f"edge group names must differ: {names}")
        if not self.edges and self.light_fleet is None:
            raise ValueError("a scenario needs edges (or light_fleet)")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes are listed twice: {self.modes}")
        if self.retrain is not None:
            self._check_retrain(self.retrain)
        for window in self.cloud_outages:
            if window.start_s >= self.duration_s:
                raise ValueError(f"cloud outage at {window.start_s} s starts after the run ends ({self.duration_s} s)")
        return self

    def _check_retrain(self, retrain: RetrainSpec) -> None:
        drifting = self.drifting_edges()
        if not drifting:
            raise ValueError("retrain: needs a camera with a drift (edges[i].cameras[j].drift)")
        if set(self.modes) - {"edgeglm", "edge_only"}:
            raise ValueError(f"modes: a drift scenario runs edgeglm (and edge_only to compare), not {self.modes}")
        if any(g.transport != "grpc" for g in self.edges):
            raise ValueError("edges[i].transport: edges fetch models over gRPC only, so a drift scenario needs grpc")
        unknown = set(retrain.rollout.canaries) - {edge for edge, _ in self.edge_ids()}
        if unknown:
            raise ValueError(f"retrain.rollout.canaries: no edge {sorted(unknown)} in this scenario")
        if not retrain.start_at_s < retrain.give_up_at_s < self.duration_s:
            raise ValueError(
                f"retrain: start_at_s {retrain.start_at_s} < give_up_at_s {retrain.give_up_at_s} < duration_s "
                f"{self.duration_s} must hold"
            )

    def drifting_edges(self) -> list[str]:
        """Edges with a camera whose look changes."""
        return [edge for edge, group in self.edge_ids() if any(c.drift is not None for c in group.cameras)]

    def edge_ids(self) -> list[tuple[str, EdgeGroup]]:
        """Every edge id with its group, in a stable order."""
        return [(f"{g.name}-{i}", g) for g in self.edges for i in range(g.count)]

    def link_for(self, group: EdgeGroup) -> LinkProfile:
        """A group's link with the scenario's cloud outages added."""
        if not self.cloud_outages:
            return group.link
        return group.link.model_copy(update={"outages": [*group.link.outages, *self.cloud_outages]})


class ScenarioError(ValueError):
    """A scenario file that cannot be used; one line per problem, with its YAML path."""


def load_scenario(path: Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read and check a scenario; relative model paths are relative to the file's folder."""
    try:
        raw = read_yaml_mapping(path)
    except ConfigError as err:
        raise ScenarioError(str(err)) from err
    raw.update(overrides or {})
    try:
        scenario = Scenario(**raw)
    except ValidationError as err:
        raise ScenarioError(format_errors(path.name, err, Scenario)) from err
    cloud = scenario.cloud
    fixed = {
        name: (path.parent / value).resolve()
        for name, value in (("onnx_model", cloud.onnx_model), ("glm_model", cloud.glm_model))
        if not value.is_absolute()
    }
    return scenario.model_copy(update={"cloud": cloud.model_copy(update=fixed)}) if fixed else scenario
