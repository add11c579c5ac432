"""Configuration of the lightweight fleet: many simulated edges in one process, and the cloud they load.

`LightFleetConfig` is what `run_light_fleet` needs; `Fleet1000Config` adds the cloud process's
settings (oracle delay, batcher) for `run_fleet_1000`. Both are shaped like the YAML a scenario
holds, `extra="forbid"`, every field bounded and described. A light edge runs the agent's dispatcher
and gRPC uplink, so its delivery settings are the agent's own sections (`edge.config`): `uplink`
(reconnect backoff, keepalive, heartbeats) and `outbox` (window, ack and verdict timeouts, bytes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.config import GrpcUplinkConfig, OutboxConfig


class LightFleetConfig(BaseModel):
    """A fleet of lightweight simulated edges: the agent's dispatcher and gRPC uplink, real samples, no detector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edges: int = Field(
        default=1000, ge=1, le=20_000, description="Simulated edges, each the agent's dispatcher and gRPC uplink."
    )
    cameras_per_edge: int = Field(default=2, ge=1, le=64, description="Cameras per edge (camera ids cam0, cam1, ...).")
    samples_per_edge: int | None = Field(
        default=10,
        ge=1,
        le=100_000,
        description="Samples each edge sends; leave unset and give duration_s to derive it from the rate.",
    )
    duration_s: float | None = Field(
        default=None, gt=0, le=3_600, description="Sending time per edge; with rate_per_edge_hz sets samples_per_edge."
    )
    rate_per_edge_hz: float = Field(default=0.5, gt=0, le=1_000, description="Samples per second each edge sends.")
    transport: Literal["grpc"] = Field(default="grpc", description="How the edges reach the cloud (gRPC only).")
    edges_per_channel: int = Field(
        default=50,
        ge=1,
        le=1_000,
        description=(
            "Edges whose uplinks share one gRPC channel (one HTTP/2 connection, a Session stream each), as behind "
            "a NAT or proxy; 1 gives every edge a connection of its own."
        ),
    )
    clips: list[Path] = Field(
        default_factory=list,
        description="Clip folders (frames/ and gt.jsonl) the cameras show; empty: generate generated_clips of them.",
    )
    generated_clips: int = Field(default=4, ge=1, le=64, description="Clips to generate when `clips` is empty.")
    clip_seconds: float = Field(default=20.0, ge=1, le=600, description="Length of each generated clip.")
    frames_per_clip: int = Field(
        default=48, ge=1, le=10_000, description="Frames of each clip pre-encoded as samples (drawn at random)."
    )
    empty_share: float = Field(
        default=0.25, ge=0, le=1, description="Share of samples showing an empty frame (motion with no detection)."
    )
    jpeg_quality: int = Field(default=80, ge=1, le=100, description="JPEG quality of the uploaded crops.")
    crop_size: int = Field(
        default=160, ge=16, le=4096, description="Smallest side of a crop in pixels; a crop grows to hold its object."
    )
    box_noise_px: float = Field(
        default=3.0, ge=0, le=50, description="Std-dev of the Gaussian noise added to ground-truth boxes (edge error)."
    )
    seed: int = Field(default=0, description="Seed of clips, frame choice and noise, so runs repeat.")
    start_ramp_s: float = Field(
        default=10.0, ge=0, le=600, description="Edges start evenly spread over this time (no thundering herd)."
    )
    uplink: GrpcUplinkConfig = Field(
        default_factory=GrpcUplinkConfig,
        description=(
            "Every edge's gRPC uplink, as edge.yaml's `uplink` (keepalive, reconnect backoff, heartbeats, send "
            "queue); the target is the cloud the run is pointed at, so it is not set here."
        ),
    )
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig,
        description=(
            "Every edge's delivery settings, as edge.yaml's `outbox` (window, ack and verdict timeouts, max_bytes); "
            "the samples are kept in memory, so there is no path and no age sweep."
        ),
    )
    dispatch_poll_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description=(
            "Longest an edge's dispatcher sleeps with nothing waking it (the agent's: 0.05 s). New samples, "
            "verdicts, deferrals and a cloud coming back wake it and resends are timed, so a longer poll changes "
            "no delivery; across a thousand edges the agent's poll costs a fifth more of the fleet's CPU."
        ),
    )
    deadline_s: float = Field(
        default=170.0,
        gt=0,
        le=36_000,
        description="Global deadline of the whole fleet run: an edge still owed verdicts then counts them as lost.",
    )

    @model_validator(mode="after")
    def _one_length(self) -> Self:
        if self.duration_s is not None and "samples_per_edge" in self.model_fields_set:
            raise ValueError("give samples_per_edge or duration_s, not both")
        return self

    @model_validator(mode="after")
    def _run_sets_the_target_and_memory_holds_the_samples(self) -> Self:
        if "target" in self.uplink.model_fields_set:
            raise ValueError("uplink.target is the cloud the run is pointed at; leave it out of the fleet's settings")
        if self.outbox.path is not None:
            raise ValueError("outbox.path does not apply: a light edge keeps its samples in memory")
        return self

    def uplink_to(self, target: str) -> GrpcUplinkConfig:
        """Every edge's uplink settings, pointed at `target` (host:port)."""
        return GrpcUplinkConfig.model_validate({**self.uplink.model_dump(), "target": target})

    @property
    def samples_each(self) -> int:
        """Samples each edge sends."""
        if self.duration_s is not None:
            return max(1, math.ceil(self.duration_s * self.rate_per_edge_hz))
        return self.samples_per_edge or 1


class LightCloudConfig(BaseModel):
    """The cloud process a lightweight fleet loads: oracle backend and batcher settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    oracle_delay_ms: float = Field(default=20.0, ge=0, le=60_000, description="Modelled inference time per batch.")
    oracle_jitter_ms: float = Field(default=10.0, ge=0, le=60_000, description="Uniform jitter added per batch.")
    max_batch_size: int = Field(default=256, ge=1, le=4_096, description="Batcher and oracle batch size.")
    max_queue_delay_ms: float = Field(default=5.0, ge=0, le=10_000, description="Batcher wait for a batch to fill.")
    max_queue_size: int = Field(
        default=50_000, ge=1, le=1_000_000, description="Requests that may wait in the batcher before it refuses."
    )
    inference_timeout_ms: float = Field(
        default=120_000.0, gt=0, le=3_600_000, description="Batcher deadline per request (queue plus inference)."
    )
    store_dsn_file: Path | None = Field(
        default=None, description="The cloud's store on PostgreSQL: a file with its DSN; unset: a SQLite file."
    )
    start_timeout_s: float = Field(default=120.0, gt=0, le=1_800, description="Time the cloud has to become healthy.")


class Fleet1000Config(BaseModel):
    """The `fleet-1000` run: the lightweight fleet and the cloud process it loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fleet: LightFleetConfig = Field(default_factory=LightFleetConfig, description="The simulated edges.")
    cloud: LightCloudConfig = Field(default_factory=LightCloudConfig, description="The cloud process's settings.")
