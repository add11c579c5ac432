"""What the bridge learns from `{edge}/status` and what it owes each edge: its retained policy.

Every replica reads every edge's status (a plain subscription, not the shared one): the retained
statuses tell a starting replica which edges exist and in which site, so it can keep each edge's
`{edge}/policy` current. `fleet/policy` carries the fleet layer for edges not heard from yet.
Republishing a retained policy with the same bytes is harmless (the edge skips what it has), so
after a reconnect everything is published again: the broker may have lost its retained messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from google.protobuf.message import DecodeError

from cloud.convert import MAX_STATUS_BYTES
from cloud.metrics import CloudMetrics
from cloud.policy import PolicyChange, PolicyEngine
from cloud.server.fleet import FleetStatus
from common.topics import OFFLINE, availability_topic
from protos import policy_pb2, session_pb2, status_pb2

logger = logging.getLogger(__name__)

FLEET = "fleet"
Publish = Callable[[str, bytes, bool], None]
_PRESENT = frozenset(
    {
        status_pb2.EDGE_STATE_ONLINE,
        status_pb2.EDGE_STATE_AUTONOMOUS,
        status_pb2.EDGE_STATE_DRAINING,
        status_pb2.EDGE_STATE_DEGRADED,
    }
)


class EdgeDirectory:
    """Edges heard from (id -> site), their presence in the fleet status, and their policies published."""

    def __init__(
        self,
        prefix: str,
        policy: PolicyEngine,
        metrics: CloudMetrics,
        publish: Publish,
        fleet: FleetStatus | None = None,
        known_edges: Collection[str] = (),
    ) -> None:
        """Publish policies under `prefix` through `publish(topic, payload, retain)`."""
        self._prefix = prefix
        self._policy = policy
        self._metrics = metrics
        self._publish = publish
        self._fleet = fleet
        self._known = frozenset(known_edges)
        self._sites: dict[str, str] = {}
        self._present: set[str] = set()
        self._published: dict[str, int] = {}

    def allowed(self, edge_id: str) -> bool:
        """False when an allow-list is configured and the edge is not on it."""
        return not self._known or edge_id in self._known

    def sample(self, edge_id: str) -> None:
        """An edge sent a sample (for the fleet status)."""
        if self._fleet is not None:
            self._fleet.sample(edge_id)

    def status(self, edge_id: str, payload: bytes) -> None:
        """An edge's (retained or live) status arrived: record it and send the edge its policy if newer."""
        if not payload or edge_id == FLEET:
            return  # a retained status cleared
        if len(payload) > MAX_STATUS_BYTES:
            self._metrics.bad_messages.labels("oversized").inc()
            logger.info(
                "status of %d bytes on edge %s's topic (at most %d): dropped", len(payload), edge_id, MAX_STATUS_BYTES
            )
            return
        try:
            status = status_pb2.EdgeStatus.FromString(payload)
        except DecodeError:
            self._metrics.bad_messages.labels("malformed").inc()
            logger.info("unreadable status (%d bytes) of edge %s: dropped", len(payload), edge_id)
            return
        if status.edge_id and status.edge_id != edge_id:
            self._metrics.bad_messages.labels("malformed").inc()
            logger.info("status of %r published on edge %s's topic: dropped", status.edge_id, edge_id)
            return
        if not self.allowed(edge_id):
            self._metrics.bad_messages.labels("unknown_edge").inc()
            logger.info("status of edge %s, not in known_edges: ignored", edge_id)
            return
        status.edge_id = edge_id
        self._track(status)
        self._sites[edge_id] = status.site_id
        self._publish_edge(edge_id)

    def _track(self, status: status_pb2.EdgeStatus) -> None:
        edge_id = status.edge_id
        present = status.state in _PRESENT
        if self._fleet is not None:
            if present and edge_id not in self._present:
                hello = session_pb2.Hello(
                    edge_id=edge_id,
                    site_id=status.site_id,
                    model_name=status.model_name,
                    model_version=status.model_version,
                    policy_version=status.policy_version,
                )
                self._fleet.connected(hello)
            elif not present and edge_id in self._present:
                self._fleet.disconnected(edge_id)
            self._fleet.heartbeat(edge_id, status)
        if present:
            self._present.add(edge_id)
        else:
            self._present.discard(edge_id)
        if status.state == status_pb2.EDGE_STATE_OFFLINE:
            # The edge's last will (or its goodbye): home automation sees it gone too (docs/events.md).
            self._publish(availability_topic(self._prefix, edge_id), OFFLINE, True)

    def connected(self) -> None:
        """The bridge (re)connected: publish the fleet policy and every known edge's, whatever was sent before."""
        self._published.clear()
        self._publish_fleet()
        for edge_id in list(self._sites):
            self._publish_edge(edge_id)

    async def policy_changed(self, change: PolicyChange) -> None:
        """PolicyEngine listener: republish what the change made newer."""
        for edge_id in list(self._sites):
            self._publish_edge(edge_id)
        if change.scope == "fleet":
            self._publish_fleet()

    def forget_presence(self) -> None:
        """The bridge stops: the fleet status no longer hears from these edges through it."""
        if self._fleet is not None:
            for edge_id in self._present:
                self._fleet.disconnected(edge_id)
        self._present.clear()

    def _publish_fleet(self) -> None:
        signed = self._policy.policy_for("", "")
        self._publish(f"{self._prefix}/{FLEET}/policy", signed.SerializeToString(), True)

    def _publish_edge(self, edge_id: str) -> None:
        site_id = self._sites[edge_id]
        version = self._policy.version_for(edge_id, site_id)
        if self._published.get(edge_id, 0) >= version:
            return
        signed = self._policy.policy_for(edge_id, site_id)
        self._publish(f"{self._prefix}/{edge_id}/policy", signed.SerializeToString(), True)
        # What was sent, not what was asked for: the next change republishes unless these bytes carry it.
        sent = policy_pb2.Policy.FromString(signed.policy).version
        self._published[edge_id] = sent
        logger.info("edge %s: policy v%d published (retained)", edge_id, sent)
