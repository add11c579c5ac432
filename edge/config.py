"""The edge agent's configuration: one pydantic tree shaped like edge.yaml.

Values come from the YAML file, then from the environment (`EDGEGLM_EDGE_` prefix, `__` between
nested keys, e.g. `EDGEGLM_EDGE_UPLINK__TARGET=cloud:50051`), then from secret files in
/run/secrets. They are read once at start-up. `load_config` turns every validation error into a line
that names the file, the YAML path and what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator
from pydantic_settings import SettingsConfigDict

from common.config import ConfigError, FileSettings, load_settings
from common.detect import DetectorConfig
from common.tls import ClientTlsConfig
from common.tracing import TracingConfig
from edge.models.config import ModelUpdateConfig
from edge.policy.settings import EdgePolicy
from edge.sources import CameraConfig

__all__ = ["ConfigError", "EdgeConfig", "load_config", "resolve_paths"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GrpcUplinkConfig(_Section):
    """The cloud over one gRPC Session stream."""

    kind: Literal["grpc"] = "grpc"
    target: str = Field(
        "localhost:50051",
        min_length=3,
        description="host:port of the cloud's gRPC service; dns:///host:port uses every address the name has "
        "(a headless Service: one per replica), ipv4:a:port,b:port a fixed list.",
    )
    load_balancing: Literal["pick_first", "round_robin"] = Field(
        "pick_first",
        description="Among the target's addresses: pick_first keeps to the first that answers (the next on "
        "failure); round_robin starts at a random one and takes the next for each new stream (edges spread "
        "over replicas).",
    )
    keepalive_time_ms: int = Field(20_000, ge=1_000, le=600_000, description="Ping the cloud after this idle time.")
    keepalive_timeout_ms: int = Field(10_000, ge=500, le=120_000, description="Drop the link if a ping is unanswered.")
    max_send_message_bytes: int = Field(8 << 20, ge=64 << 10, le=256 << 20, description="Largest message sent.")
    max_receive_message_bytes: int = Field(8 << 20, ge=64 << 10, le=256 << 20, description="Largest message accepted.")
    reconnect_backoff_initial_ms: int = Field(500, ge=50, le=60_000, description="First reconnect delay (gRPC's own).")
    reconnect_backoff_max_ms: int = Field(15_000, ge=100, le=600_000, description="Cap of the reconnect delay.")
    heartbeat_interval_s: float = Field(5.0, ge=0.5, le=3600, description="Seconds between status heartbeats.")
    send_queue_size: int = Field(
        256, ge=1, le=100_000, description="Samples waiting for the stream's writer, at most; beyond, wait."
    )
    tls: ClientTlsConfig | None = Field(
        None,
        description="Mutual TLS to the cloud: its CA, this edge's certificate (CN = edge id) and key; unset: "
        "plain TCP (a private network only).",
    )

    @field_validator("target")
    @classmethod
    def _host_port(cls, value: str) -> str:
        for scheme in ("dns:///", "ipv4:", "ipv6:"):  # gRPC's own resolvers
            if value.startswith(scheme) and len(value) > len(scheme) + 2:
                return value
        if "://" in value:
            raise ValueError(
                f"{value!r} has a scheme; give host:port (e.g. cloud.example:50051), and for TLS set uplink.tls"
            )
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (expected e.g. cloud.example:50051)")
        return value


class MqttUplinkConfig(_Section):
    """The cloud through an MQTT 5 broker."""

    kind: Literal["mqtt"] = "mqtt"
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    client_id: str = Field(
        "", max_length=128, description="MQTT client id; empty: the edge id (one persistent session per edge)."
    )
    topic_prefix: str = Field(
        "edgeglm", min_length=1, pattern=r"^[^#+\s]+$", description="First topic levels; no wildcards."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive; the broker declares us gone after 1.5x.")
    session_expiry_s: int = Field(
        86_400, ge=0, le=4_294_967_295, description="How long the broker keeps our session and queued verdicts."
    )
    qos: Literal[1] = Field(1, description="QoS of samples, verdicts, policies and status (the contract: 1).")
    max_inflight: int = Field(
        20, ge=1, le=65_535, description="QoS 1 messages unacknowledged at once, each way (receive maximum)."
    )
    reconnect_backoff_min_s: int = Field(1, ge=1, le=600, description="First reconnect delay (paho's backoff).")
    reconnect_backoff_max_s: int = Field(30, ge=1, le=3600, description="Cap of the reconnect delay.")
    tls: ClientTlsConfig | None = Field(
        None,
        description="TLS to the broker with this edge's certificate (CN = edge id; the broker's ACL keeps each "
        "edge to its own topics); unset: plain TCP (a private network only).",
    )

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_off(cls, value: Any) -> Any:
        return None if value is False else value  # `tls: false` as earlier configs wrote it

    heartbeat_interval_s: float = Field(5.0, ge=0.5, le=3600, description="Seconds between status heartbeats.")
    send_queue_size: int = Field(
        256, ge=1, le=100_000, description="Sample publishes the broker has not acknowledged, at most; beyond, wait."
    )
    call_timeout_s: float = Field(10.0, ge=0.1, le=600, description="Deadline of the offline status published at stop.")
    homeassistant: bool = Field(
        True, description="Announce each camera's sensors by Home Assistant MQTT discovery (edge/homeassistant.py)."
    )
    discovery_prefix: str = Field(
        "homeassistant", min_length=1, pattern=r"^[^#+\s]+$", description="Home Assistant's discovery prefix."
    )


def _uplink_kind(value: Any) -> str:
    """The uplink's `kind`; gRPC when the file leaves it out."""
    if isinstance(value, dict):
        return str(value.get("kind", "grpc"))
    return str(getattr(value, "kind", "grpc"))


UplinkConfig = Annotated[
    Annotated[GrpcUplinkConfig, Tag("grpc")] | Annotated[MqttUplinkConfig, Tag("mqtt")],
    Discriminator(_uplink_kind),
]


class PolicyConfig(_Section):
    """Where policies are verified and kept."""

    public_key: Path | None = Field(
        None, description="PEM public key of the cloud's policy signer; without it no cloud policy is accepted."
    )
    extra_public_keys: list[Path] = Field(
        default_factory=list,
        description="Keys also trusted, for a rotation of the cloud's key: the next one before the cloud signs "
        "with it, the previous one until every policy in flight is signed with the new.",
    )
    initial: EdgePolicy = Field(
        default_factory=EdgePolicy, description="Policy in force until the cloud sends one (version 0)."
    )


class OutboxConfig(_Section):
    """The on-disk queue of samples, each kept until its verdict comes (protos/session.proto)."""

    path: Path | None = Field(None, description="SQLite file; default: state_dir/outbox.sqlite.")
    max_bytes: int = Field(
        512 << 20, ge=1 << 20, le=1 << 40, description="Bytes kept at most; beyond, lowest priority goes first."
    )
    max_age_s: float = Field(
        86_400.0, ge=60, le=30 * 86_400, description="Samples older than this are dropped (and counted)."
    )
    expire_every_s: float = Field(15.0, ge=1, le=3600, description="How often old samples are swept.")
    window: int = Field(
        16, ge=1, le=1024, description="Samples sent whose verdict has not come, at most (bounds the cloud's work)."
    )
    ack_timeout_s: float = Field(
        30.0, ge=0.1, le=3600, description="Send a sample again when the cloud's Ack is this late."
    )
    verdict_timeout_s: float = Field(
        120.0, ge=0.1, le=86_400, description="Send a sample again when its Verdict is this late after the Ack."
    )


class EventsConfig(_Section):
    """Local events of tracked objects (new, update, end; docs/events.md)."""

    path: Path | None = Field(None, description="JSON-lines file of events; default: state_dir/events.jsonl.")
    snapshots: bool = Field(
        True, description="Attach a JPEG of the object to new events and label changes (MQTT: retained per label)."
    )


class TrackingConfig(_Section):
    """The per-camera object tracker (ByteTrack) and how tracked objects ask the cloud."""

    ask: Literal["per_track", "per_frame"] = Field(
        "per_track",
        description="per_track: one question per object, its verdict applies to the whole track. per_frame: every "
        "hard frame goes up under the policy's resend interval, as Sedna's joint inference does (for comparisons).",
    )
    lost_after_s: float = Field(
        3.0, gt=0, le=600, description="A track not detected for this long (capture time) ends with an end event."
    )
    ask_window_s: float = Field(
        0.5,
        ge=0,
        le=30,
        description="A track that turns hard asks with its best frame of this window (capture time); 0 = at once.",
    )
    max_asks: int = Field(
        3, ge=1, le=100, description="Questions one track may ask in its life (a class change or unsure answer)."
    )
    match_diou: float = Field(
        -0.5,
        ge=-1,
        le=1,
        description="Distance-IoU (-1 far apart .. 1 the same box) a detection needs to continue a track; below 0 "
        "it may continue one it no longer overlaps (a fast object at a low frame rate).",
    )
    frame_rate: float = Field(10.0, gt=0, le=240, description="Nominal detected frames per second, for motion.")


class HealthConfig(_Section):
    """The /healthz, /readyz and /metrics endpoint."""

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8081, ge=0, le=65535, description="Port (0 picks a free one).")
    liveness_timeout_s: float = Field(30.0, ge=1, le=3600, description="Unhealthy when no frame progressed this long.")


class PipelineConfig(_Section):
    """Between the cameras and the uplink."""

    detect_batch_size: int = Field(4, ge=1, le=64, description="Frames of several cameras detected in one call.")
    detect_queue_size: int = Field(
        8, ge=1, le=1024, description="Frames waiting for the detector; beyond, drop oldest."
    )
    drain_deadline_s: float = Field(
        10.0,
        ge=0,
        le=600,
        description="Shutdown as a whole: finishing frames, waiting for verdicts and closing the uplink fit in this.",
    )
    send_every_frame: bool = Field(
        False,
        description=(
            "Send every frame that passes the gate to the cloud (data collection, or the cloud-only baseline of "
            "the simulation), as an audit sample when no mining rule fired; local events still happen."
        ),
    )
    autonomous_ready: bool = Field(
        True, description="Report ready while the cloud is unreachable (the edge decides alone meanwhile)."
    )


class EdgeConfig(FileSettings):
    """The whole edge.yaml."""

    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="EDGEGLM_EDGE_", env_nested_delimiter="__", secrets_dir=None
    )

    edge_id: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$", description="Unique id.")
    site_id: str = Field("default", min_length=1, max_length=128, description="Site the gateway belongs to.")
    state_dir: Path = Field(Path("/var/lib/edgeglm"), description="Persisted policy, events and (later) outbox.")
    cameras: list[CameraConfig] = Field(..., min_length=1, description="Cameras this agent reads.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="The YOLO ONNX detector.")
    model_version: str = Field("", max_length=128, description="Version reported for the configured detector model.")
    models: ModelUpdateConfig = Field(
        default_factory=ModelUpdateConfig, description="Models the cloud rolls out: where kept, what they must pass."
    )
    uplink: UplinkConfig = Field(
        default_factory=GrpcUplinkConfig, description="Link to the cloud: kind grpc (default) or mqtt."
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Policy verification and defaults.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Store-and-forward queue.")
    events: EventsConfig = Field(default_factory=EventsConfig, description="Local events.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Object tracking and questions.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Health and metrics endpoint.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Pipeline queues and shutdown.")
    tracing: TracingConfig = Field(
        default_factory=TracingConfig, description="OpenTelemetry traces of samples (common/tracing.py); off."
    )

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        ids = [camera.id for camera in cameras]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"camera ids must be unique; repeated: {', '.join(duplicates)}")
        return cameras


def load_config(path: Path) -> EdgeConfig:
    """Read and validate edge.yaml; relative paths in it are relative to the file's folder."""
    return resolve_paths(load_settings(path, EdgeConfig), path.parent)


def resolve_paths(config: EdgeConfig, base: Path) -> EdgeConfig:
    """Make the file's relative paths relative to its folder, not to the working directory."""

    def fix(value: Path | None) -> Path | None:
        if value is None or value.is_absolute():
            return value
        return (base / value).resolve()

    updates: dict[str, Any] = {"state_dir": fix(config.state_dir)}
    updates["detector"] = config.detector.model_copy(update={"model_path": fix(config.detector.model_path)})
    extras = [path for path in (fix(p) for p in config.policy.extra_public_keys) if path is not None]
    updates["policy"] = config.policy.model_copy(
        update={"public_key": fix(config.policy.public_key), "extra_public_keys": extras}
    )
    updates["models"] = config.models.model_copy(update={"dir": fix(config.models.dir)})
    updates["events"] = config.events.model_copy(update={"path": fix(config.events.path)})
    updates["outbox"] = config.outbox.model_copy(update={"path": fix(config.outbox.path)})
    cameras = []
    for camera in config.cameras:
        url = camera.url
        if "://" not in url and not os.path.isabs(url):
            url = str((base / url).resolve())
        cameras.append(camera.model_copy(update={"url": url}))
    updates["cameras"] = cameras
    uplink = config.uplink
    if isinstance(uplink, GrpcUplinkConfig) and uplink.tls is not None:
        tls = uplink.tls
        files = {name: fix(getattr(tls, name)) for name in ("ca_file", "cert_file", "key_file")}
        updates["uplink"] = uplink.model_copy(update={"tls": tls.model_copy(update=files)})
    return config.model_copy(update=updates)
