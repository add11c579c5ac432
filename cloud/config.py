"""The cloud service's configuration: one pydantic tree shaped like cloud.yaml.

Values come from the YAML file, then from the environment (`EDGEGLM_CLOUD_` prefix, `__` between
nested keys, e.g. `EDGEGLM_CLOUD_SERVER__PORT=50051`), then from secret files in /run/secrets when
that folder exists. They are read once, at start-up. `load_config` turns every validation error
into one line naming the file, the YAML path and what is wrong, e.g.
`cloud.yaml: batcher.max_batch_size: 0 is below the minimum 1`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from cloud.backends import BackendConfig, OracleBackendConfig
from cloud.batcher import BatcherConfig
from cloud.bridge.config import MqttBridgeConfig
from cloud.dataset.config import DatasetConfig
from cloud.ingest.config import IngestConfig
from cloud.models.config import ModelsConfig
from cloud.policy.loop_config import ClosedLoopConfig
from cloud.policy.settings import PolicyOverride, PolicySettings
from common.config import ConfigError, FileSettings, load_settings
from common.tls import ServerTlsConfig
from common.tracing import TracingConfig

__all__ = ["CloudConfig", "ConfigError", "load_config", "resolve_paths"]
MIB = 1 << 20
_EDGE_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    """The gRPC server the edges connect to."""

    host: str = Field("0.0.0.0", min_length=1, description="Address to listen on ([::] for IPv6 too).")
    tls: ServerTlsConfig | None = Field(
        None,
        description="Mutual TLS: every edge shows a certificate of client_ca_file, whose CN is the only edge id "
        "it may speak for; unset: plain TCP (a private network only).",
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A second, plaintext port serving only grpc.health.v1, for probes that speak no TLS (the "
        "kubelet's); 0 picks a free one; unset: health is served on the main port only.",
    )
    port: int = Field(50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one (logged at start).")
    max_receive_message_bytes: int = Field(
        8 * MIB, ge=64 << 10, le=256 * MIB, description="Largest message accepted; bigger ones get RESOURCE_EXHAUSTED."
    )
    max_send_message_bytes: int = Field(8 * MIB, ge=64 << 10, le=256 * MIB, description="Largest message sent.")
    keepalive_time_ms: int = Field(
        30_000, ge=1_000, le=3_600_000, description="Ping an edge after this long without traffic."
    )
    keepalive_timeout_ms: int = Field(
        10_000, ge=500, le=600_000, description="Drop a connection whose ping is not answered within this time."
    )
    min_client_ping_interval_ms: int = Field(
        10_000,
        ge=1_000,
        le=3_600_000,
        description="Shortest interval between edge keepalive pings tolerated; keep it below the edges' keepalive.",
    )
    max_pings_without_data: int = Field(
        0, ge=0, le=1_000, description="Pings sent with no data in between (0 = unlimited, for idle sessions)."
    )
    max_concurrent_streams: int = Field(
        1_000, ge=1, le=100_000, description="Concurrent RPCs per connection (one Session per edge, plus unary calls)."
    )
    session_send_queue_size: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Messages waiting to go down one Session; when full, reading that edge's stream waits.",
    )
    max_samples_in_flight_per_session: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Samples of one Session being judged at once; beyond, reading that edge's stream waits.",
    )
    hello_timeout_s: float = Field(10.0, gt=0, le=600, description="Time an edge has to say Hello after connecting.")
    max_connection_age_s: float | None = Field(
        None,
        gt=0,
        le=30 * 86400,
        description="Replicas: close each edge connection after this long (GOAWAY) so long Session streams "
        "spread over replicas added since; unset: never. The edge reconnects and resends what is in flight.",
    )
    max_connection_age_grace_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="After max_connection_age_s, the time a Session stream still has to finish before it is cut.",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, le=600, description="Shutdown: time to finish judging and delivering what was accepted."
    )


class StoreConfig(_Section):
    """Where the verdicts (deduplication) and the policy versions are kept."""

    kind: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="sqlite: a file on this node (the embedded default); postgres: a PostgreSQL server."
    )
    path: Path = Field(
        Path("/var/lib/edgeglm-cloud/verdicts.sqlite"),
        description="SQLite file of verdicts; the policy version state sits next to it (policy-state.json); "
        "on postgres both live in the database (this folder is then unused).",
    )
    dsn_file: Path | None = Field(
        None,
        description="postgres: a file (a Secret) holding the connection string, e.g. "
        "postgresql://edgeglm:PASSWORD@db:5432/edgeglm; it is never logged.",
    )
    pool_size: int = Field(4, ge=1, le=64, description="postgres: connections the verdict store keeps at most.")
    retention_s: float = Field(
        7 * 86400.0,
        ge=3600,
        le=10 * 365 * 86400.0,
        description="Verdicts, thumbnails and edge snapshots older than this are pruned (hourly); keep it above "
        "the edges' outbox TTL, or an old resend is judged again.",
    )

    @model_validator(mode="after")
    def _postgres_has_a_dsn(self) -> Self:
        if self.kind == "postgres" and self.dsn_file is None:
            raise ValueError("kind is postgres but dsn_file is unset: give the file holding the connection string")
        return self

    @property
    def dsn_file_required(self) -> Path:
        """dsn_file, which postgres requires (the validator makes sure)."""
        if self.dsn_file is None:
            raise ValueError("store.dsn_file is unset")
        return self.dsn_file

    @property
    def policy_state_path(self) -> Path:
        """The policy engine's version counter, next to the verdict store."""
        return self.path.parent / "policy-state.json"


class PolicyConfig(_Section):
    """Policies the cloud signs and pushes to the fleet."""

    signing_key: Path | None = Field(
        None,
        description=(
            "Ed25519 private key (PKCS8 PEM) policies are signed with; edges hold its .pub. "
            "Unset: a throw-away key per run (edges then refuse the policies)."
        ),
    )
    create_signing_key: bool = Field(
        False, description="Create signing_key (and its .pub next to it) when the file does not exist."
    )
    fleet: PolicySettings = Field(default_factory=PolicySettings, description="The policy of every edge.")
    sites: dict[str, PolicyOverride] = Field(
        default_factory=dict, description="site_id -> the fields that differ from the fleet policy for that site."
    )
    edges: dict[str, PolicyOverride] = Field(
        default_factory=dict, description="edge_id -> the fields that differ from its site's and the fleet policy."
    )
    closed_loop: ClosedLoopConfig = Field(
        default_factory=ClosedLoopConfig, description="Move each edge's uncertainty bands from the cloud's verdicts."
    )
    lifetime_s: float = Field(
        30 * 86_400.0,
        ge=60,
        le=366 * 86_400.0,
        description="How long a signed policy is accepted on arrival (its not_after); signed again at half of it.",
    )


# The admin API's roles, each allowed what the one before it is: viewer reads, operator also changes
# policies and overrides, admin also issues and revokes API tokens (/api/admin).
AdminRole = Literal["viewer", "operator", "admin"]
ADMIN_ROLES: tuple[AdminRole, ...] = ("viewer", "operator", "admin")
ADMIN_USER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class AdminUserConfig(_Section):
    """One user of the admin API (cloud/api/auth.py)."""

    name: str = Field(..., pattern=ADMIN_USER_NAME, description="Shown in the policy history.")
    role: AdminRole = Field(
        ...,
        description="viewer: read everything; operator: also change policies and overrides; admin: also issue and "
        "revoke API tokens (/api/admin).",
    )
    token_file: Path = Field(..., description="File holding the user's token (16+ characters), e.g. a Secret's key.")


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class AdminConfig(_Section):
    """The admin HTTP API: health, metrics, policies, fleet status, verdicts, dashboard."""

    enabled: bool = Field(True, description="Serve the admin API.")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to listen on; any but loopback needs `users` (or allow_anonymous).",
    )
    port: int = Field(8080, ge=0, le=65535, description="Port; 0 picks a free one (logged at start).")
    users: list[AdminUserConfig] = Field(
        default_factory=list,
        description="Who may use the API, by token; empty: anyone who reaches it (loopback only by default).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        min_length=1,
        description="Host header names the API answers to (DNS rebinding); '*.example.com' wildcards, '*' any.",
    )
    write_rate_per_s: float = Field(
        2.0, gt=0, le=1000, description="Changes (PUT, POST, DELETE) a user may make a second on average; 429 beyond."
    )
    write_burst: int = Field(
        30, ge=1, le=10_000, description="Changes a user may make at once before the rate applies."
    )
    allow_anonymous: bool = Field(
        False, description="Serve without users on a non-loopback address: anyone who reaches it may change policies."
    )
    edge_snapshot_interval_s: float = Field(
        10.0, ge=0.1, le=3600, description="How often edges' status is copied to the store (kept across restarts)."
    )

    @model_validator(mode="after")
    def _guarded(self) -> Self:
        if self.enabled and not self.users and not self.allow_anonymous and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"host is {self.host} but no users are configured: anyone who reaches it could change every "
                "edge's policy; add users (name, role, token_file), bind to 127.0.0.1, or set allow_anonymous: true"
            )
        names = [user.name for user in self.users]
        if len(set(names)) != len(names):
            raise ValueError(f"users: a name appears more than once ({', '.join(sorted(names))})")
        return self


class CloudConfig(FileSettings):
    """The whole cloud.yaml."""

    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="EDGEGLM_CLOUD_", env_nested_delimiter="__", secrets_dir=None
    )

    server: ServerConfig = Field(default_factory=ServerConfig, description="gRPC server for the edges.")
    batcher: BatcherConfig = Field(default_factory=BatcherConfig, description="Dynamic batching before the backend.")
    backend: BackendConfig = Field(
        ..., description="The model that judges samples; no default: pick onnx, oracle (simulation), ... by `kind`."
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="Verdict store and policy state.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Fleet policy, overrides and signing.")
    known_edges: list[str] = Field(
        default_factory=list, description="Edge ids allowed to connect; empty accepts any edge."
    )
    admin: AdminConfig = Field(default_factory=AdminConfig, description="Admin HTTP API.")
    ingest: IngestConfig = Field(
        default_factory=IngestConfig, description="Back-pressure and retry hints for samples not judged at once."
    )
    mqtt: MqttBridgeConfig = Field(
        default_factory=MqttBridgeConfig, description="MQTT bridge: samples from edges that speak MQTT."
    )
    tracing: TracingConfig = Field(
        default_factory=TracingConfig, description="OpenTelemetry traces of samples (common/tracing.py); off."
    )
    dataset: DatasetConfig = Field(
        default_factory=DatasetConfig,
        description="The field dataset: every judged sample kept as a training record (cloud/dataset); off.",
    )
    models: ModelsConfig = Field(
        default_factory=ModelsConfig, description="Edge models: the registry edges fetch from, staged rollouts."
    )

    @field_validator("known_edges")
    @classmethod
    def _valid_edge_ids(cls, edges: list[str]) -> list[str]:
        bad = [edge for edge in edges if not edge or not all(c.isalnum() or c in "_.-" for c in edge)]
        if bad:
            raise ValueError(f"edge ids are letters, digits, _ . - only; not {', '.join(map(repr, bad))}")
        return edges


def load_config(path: Path) -> CloudConfig:
    """Read and validate cloud.yaml (plus environment and secrets); relative paths are relative to its folder."""
    resolved = resolve_paths(load_settings(path, CloudConfig), path.parent)
    model_path = getattr(resolved.backend, "model_path", None)
    if resolved.backend.kind == "glm" and isinstance(model_path, Path) and not model_path.exists():
        raise ConfigError(
            f"{path.name}: backend.model_path: {model_path} does not exist "
            "(train one with make train-glm, or point at a GLM-4V folder)"
        )
    dsn_file = resolved.store.dsn_file
    if resolved.store.kind == "postgres" and dsn_file is not None and not dsn_file.is_file():
        raise ConfigError(f"{path.name}: store.dsn_file: {dsn_file} does not exist (the PostgreSQL connection string)")
    return resolved


def resolve_paths(config: CloudConfig, base: Path) -> CloudConfig:
    """Make the file's relative paths relative to its folder, not to the working directory."""

    def fix(value: Path | None) -> Path | None:
        return value if value is None or value.is_absolute() else (base / value).resolve()

    store = config.store.model_copy(update={"path": fix(config.store.path), "dsn_file": fix(config.store.dsn_file)})
    policy = config.policy.model_copy(update={"signing_key": fix(config.policy.signing_key)})
    backend_paths: dict[str, Any] = {
        name: fix(value) for name, value in vars(config.backend).items() if isinstance(value, Path)
    }
    if isinstance(config.backend, OracleBackendConfig):
        backend_paths["ground_truth"] = {camera: fix(p) for camera, p in config.backend.ground_truth.items()}
    backend = config.backend.model_copy(update=backend_paths)
    models = config.models.model_copy(update={"registry": fix(config.models.registry)})
    return config.model_copy(update={"store": store, "policy": policy, "backend": backend, "models": models})
