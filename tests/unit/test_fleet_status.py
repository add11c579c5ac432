"""cloud/server/fleet.py: what the cloud remembers of edges stays bounded, and never forgets a connected one."""

from __future__ import annotations

from cloud.server.fleet import FleetStatus
from protos import session_pb2, status_pb2


def test_invented_edge_ids_cost_nothing_lasting_and_connected_edges_are_kept() -> None:
    fleet = FleetStatus(max_edges=3)
    fleet.connected(session_pb2.Hello(edge_id="gw-real"))  # stays connected throughout
    for n in range(50):  # an attacker's invented ids, each seen once
        fleet.heartbeat(f"fake-{n}", status_pb2.EdgeStatus(edge_id=f"fake-{n}"))
    kept = [record["edge_id"] for record in fleet.snapshot()]
    assert len(kept) == 3 and "gw-real" in kept
    assert {"fake-48", "fake-49"} <= set(kept), "the ones seen last are the ones kept"
