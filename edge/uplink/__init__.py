"""The uplink stage: the dispatcher (outbox -> transport, to each sample's verdict) and the transports."""

from __future__ import annotations

from edge.config import GrpcUplinkConfig, MqttUplinkConfig
from edge.metrics import EdgeMetrics
from edge.uplink.base import Uplink, UplinkHandlers
from edge.uplink.grpc import GrpcUplink
from edge.uplink.mqtt import MqttUplink


def make_uplink(config: GrpcUplinkConfig | MqttUplinkConfig, handlers: UplinkHandlers, metrics: EdgeMetrics) -> Uplink:
    """The transport the config's `kind` names."""
    if config.kind == "mqtt":
        return MqttUplink(config, handlers, metrics)
    return GrpcUplink(config, handlers, metrics)


__all__ = ["Uplink", "UplinkHandlers", "make_uplink"]
