"""What the cloud knows of each edge: its sessions, its Hello and its last heartbeat, in memory.

Lost on restart by design: edges reconnect and report again within a heartbeat interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from cloud.convert import MAX_FLEET_EDGES
from protos import session_pb2, status_pb2


@dataclass
class EdgeRecord:
    """One edge as last heard from."""

    edge_id: str
    site_id: str = ""
    sessions: int = 0
    first_seen: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    hello: session_pb2.Hello | None = None
    status: status_pb2.EdgeStatus | None = None
    policy_version_sent: int = 0
    samples: int = 0
    # (name, version) of the detector model it runs, from its newest Hello or heartbeat.
    model: tuple[str, str] = ("", "")

    def to_json(self) -> dict[str, Any]:
        """The record as JSON for the admin API."""
        hello = self.hello
        model_name, model_version = self.model
        return {
            "edge_id": self.edge_id,
            "site_id": self.site_id,
            "connected": self.sessions > 0,
            "sessions": self.sessions,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "model_name": model_name,
            "model_version": model_version,
            "agent_version": hello.agent_version if hello else "",
            "policy_version": self.status.policy_version if self.status else (hello.policy_version if hello else 0),
            "policy_version_sent": self.policy_version_sent,
            "samples": self.samples,
            "status": _message_json(self.status),
        }


def _message_json(message: status_pb2.EdgeStatus | None) -> dict[str, Any] | None:
    if message is None:
        return None
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class FleetStatus:
    """Edge records by edge id, updated by sessions; at most `max_edges`, so invented ids cost nothing lasting."""

    def __init__(self, max_edges: int = MAX_FLEET_EDGES) -> None:
        """Start with no edge known."""
        self._edges: dict[str, EdgeRecord] = {}
        self._max_edges = max_edges

    def get(self, edge_id: str) -> EdgeRecord | None:
        """The record of an edge, if it ever connected."""
        return self._edges.get(edge_id)

    def connected(self, hello: session_pb2.Hello) -> EdgeRecord:
        """An edge opened a session."""
        record = self._record(hello.edge_id)
        record.site_id = hello.site_id
        record.hello = hello
        record.model = (hello.model_name, hello.model_version)
        record.sessions += 1
        record.last_seen = time.time()
        return record

    def disconnected(self, edge_id: str) -> None:
        """A session of an edge ended."""
        record = self._edges.get(edge_id)
        if record is not None:
            record.sessions = max(0, record.sessions - 1)
            record.last_seen = time.time()

    def heartbeat(self, edge_id: str, status: status_pb2.EdgeStatus) -> None:
        """An edge reported its status."""
        record = self._record(edge_id)
        record.status = status
        if status.model_name:
            record.model = (status.model_name, status.model_version)
        record.site_id = status.site_id or record.site_id
        record.last_seen = time.time()

    def sample(self, edge_id: str) -> None:
        """An edge sent a sample."""
        record = self._edges.get(edge_id)
        if record is not None:
            record.samples += 1
            record.last_seen = time.time()

    def _record(self, edge_id: str) -> EdgeRecord:
        record = self._edges.get(edge_id)
        if record is None:
            if len(self._edges) >= self._max_edges:
                gone = [r for r in self._edges.values() if r.sessions == 0]
                if gone:  # the edge gone longest is forgotten; one connected now never is
                    del self._edges[min(gone, key=lambda r: r.last_seen).edge_id]
            record = self._edges[edge_id] = EdgeRecord(edge_id)
        return record

    def snapshot(self) -> list[dict[str, Any]]:
        """Every edge ever seen since start, as JSON, by edge id."""
        return [self._edges[edge].to_json() for edge in sorted(self._edges)]

    def records(self) -> list[EdgeRecord]:
        """Every edge ever seen since start, by edge id."""
        return [self._edges[edge] for edge in sorted(self._edges)]
