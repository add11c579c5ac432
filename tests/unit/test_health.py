"""edge/health.py: real HTTP GETs against /healthz, /readyz and /metrics on a free port."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from edge.health import HealthServer
from edge.metrics import EdgeMetrics


@dataclass
class AgentState:
    alive: bool = True
    reason: str = "frames flowing"
    ready: bool = True
    state: str = "online"
    reasons: list[str] = field(default_factory=list)
    broken: bool = False

    def liveness(self) -> tuple[bool, str]:
        if self.broken:
            raise RuntimeError("watchdog lost")
        return self.alive, self.reason

    def readiness(self) -> tuple[bool, str, list[str]]:
        return self.ready, self.state, self.reasons


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


@pytest.fixture
def state() -> AgentState:
    return AgentState()


@pytest.fixture
def metrics() -> EdgeMetrics:
    return EdgeMetrics()


@pytest.fixture
def server(state: AgentState, metrics: EdgeMetrics) -> Iterator[HealthServer]:
    health = HealthServer("127.0.0.1", 0, metrics.registry, state.liveness, state.readiness)
    health.start()
    yield health
    health.stop()


def get(server: HealthServer, path: str) -> Reply:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return Reply(response.status, response.headers["Content-Type"], response.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, err.headers["Content-Type"], err.read())


def test_port_zero_picks_a_free_port(server: HealthServer) -> None:
    assert server.port > 0


def test_healthz_is_ok_while_progress_is_recent(server: HealthServer) -> None:
    reply = get(server, "/healthz")
    assert reply.status == 200
    assert reply.json() == {"alive": True, "reason": "frames flowing"}


def test_healthz_fails_with_the_reason_when_progress_stops(server: HealthServer, state: AgentState) -> None:
    state.alive, state.reason = False, "no frame from any camera for 31 s"
    reply = get(server, "/healthz")
    assert reply.status == 503
    assert reply.json() == {"alive": False, "reason": "no frame from any camera for 31 s"}


def test_healthz_fails_when_the_liveness_check_itself_fails(server: HealthServer, state: AgentState) -> None:
    state.broken = True
    reply = get(server, "/healthz")
    assert reply.status == 503
    assert "watchdog lost" in str(reply.json()["reason"])


def test_readyz_reports_state_and_reasons(server: HealthServer, state: AgentState) -> None:
    state.state, state.reasons = "autonomous", ["cloud unreachable (connecting)"]
    reply = get(server, "/readyz")
    assert reply.status == 200 and reply.content_type == "application/json"
    assert reply.json() == {"ready": True, "state": "autonomous", "reasons": ["cloud unreachable (connecting)"]}


def test_readyz_is_unavailable_while_not_ready(server: HealthServer, state: AgentState) -> None:
    state.ready, state.state, state.reasons = False, "starting", ["detector not loaded"]
    reply = get(server, "/readyz")
    assert reply.status == 503
    assert reply.json() == {"ready": False, "state": "starting", "reasons": ["detector not loaded"]}


def test_metrics_serves_the_agents_registry(server: HealthServer, metrics: EdgeMetrics) -> None:
    metrics.local_events.labels("cat", "new").inc(3)
    reply = get(server, "/metrics")
    assert reply.status == 200 and reply.content_type.startswith("text/plain")
    assert 'edgeglm_edge_local_events_total{label="cat",type="new"} 3.0' in reply.body.decode()


def test_unknown_path_is_not_found(server: HealthServer) -> None:
    reply = get(server, "/nope")
    assert reply.status == 404
    assert "/healthz" in str(reply.json()["error"])


def test_stop_releases_the_port(state: AgentState, metrics: EdgeMetrics) -> None:
    health = HealthServer("127.0.0.1", 0, metrics.registry, state.liveness, state.readiness)
    health.start()
    port = health.port
    health.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
    health.stop()  # a second stop is harmless
