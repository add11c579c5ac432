"""The MQTT bridge's section of cloud.yaml."""

from __future__ import annotations

import socket

from pydantic import BaseModel, ConfigDict, Field

from common.tls import ClientTlsConfig


class MqttBridgeConfig(BaseModel):
    """The cloud's side of the MQTT transport: a shared subscription to every edge's samples."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Run the MQTT bridge next to the gRPC server.")
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    client_id: str = Field(
        "", max_length=128, description="MQTT client id, unique per replica; empty: edgeglm-cloud-<host name>."
    )
    share_group: str = Field(
        "edgeglm-cloud",
        min_length=1,
        pattern=r"^[^/#+\s]+$",
        description="Shared-subscription group: replicas in one group split the samples between them.",
    )
    topic_prefix: str = Field(
        "edgeglm", min_length=1, pattern=r"^[^#+\s]+$", description="First topic levels; no wildcards."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive.")
    session_expiry_s: int = Field(
        60,
        ge=0,
        le=4_294_967_295,
        description=(
            "How long the broker keeps this replica's session (samples in flight to it) after it vanishes; what is"
            " lost past it the edges send again (each keeps its samples until their verdicts)."
        ),
    )
    max_in_flight: int = Field(
        256, ge=1, le=65_535, description="Samples being judged at once (the MQTT receive maximum: the broker waits)."
    )
    tls: ClientTlsConfig | None = Field(
        None,
        description="TLS to the broker with the cloud's client certificate (CN edgeglm-cloud in the K3s ACL); "
        "unset: plain TCP.",
    )
    max_message_bytes: int = Field(
        8 << 20,
        ge=64 << 10,
        le=256 << 20,
        description="Largest sample accepted (as the gRPC server's limit); bigger ones are dropped, counted "
        "as oversized, and the edge told why.",
    )
    reconnect_backoff_min_s: int = Field(1, ge=1, le=600, description="First reconnect delay (paho's backoff).")
    reconnect_backoff_max_s: int = Field(30, ge=1, le=3600, description="Cap of the reconnect delay.")

    def effective_client_id(self) -> str:
        """The client id to use: the configured one or one derived from this host's name."""
        return self.client_id or f"edgeglm-cloud-{socket.gethostname()}"[:128]
