"""MQTT topic names both sides build: one home, so the edge and the cloud's bridge cannot drift apart."""

from __future__ import annotations

ONLINE = b"online"
OFFLINE = b"offline"


def topic_level(name: str) -> str:
    """`name` as one MQTT topic level: the separator and the wildcards become underscores."""
    return name.replace("/", "_").replace("+", "_").replace("#", "_") or "_"


def availability_topic(prefix: str, edge_id: str) -> str:
    """The edge's availability for home automation: "online" / "offline", retained (Home Assistant's form)."""
    return f"{prefix}/{topic_level(edge_id)}/availability"
