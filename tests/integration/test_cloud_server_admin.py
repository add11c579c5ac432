"""The admin HTTP API of a running service (real uvicorn port, httpx), and what it does to edge sessions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from typer.testing import CliRunner

from cloud.cli import app as cloud_app
from cloud.config import CloudConfig
from protos import policy_pb2, session_pb2
from tests.helpers.cloud import (
    WAIT_S,
    busy_frames,
    channel,
    counter,
    make_config,
    make_sample,
    open_session,
    read,
    running,
)

EDGE_BANDS = "mining:\n  bands:\n    person: {low: 0.1, high: 0.9}\n"


def admin_config(tmp_path: Path, clip: Path) -> CloudConfig:
    return make_config(tmp_path, clip, admin={"enabled": True, "host": "127.0.0.1", "port": 0})


async def test_an_edge_policy_set_through_the_api_is_pushed_to_that_edge_only(tmp_path: Path, clip: Path) -> None:
    async with running(admin_config(tmp_path, clip)) as service, channel(service) as stub:
        mine, first = await open_session(stub, "gw-1")
        other, _ = await open_session(stub, "gw-2")
        base = f"http://127.0.0.1:{service.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
            edge = await client.put("/policies/edges/gw-1", content=EDGE_BANDS)
            fleet = await client.put("/policies/fleet", json={"uplink": {"jpeg_quality": 60}})
        pushed_to_mine = [policy_pb2.Policy.FromString((await read(mine)).policy.policy) for _ in range(2)]
        pushed_to_other = policy_pb2.Policy.FromString((await read(other)).policy.policy)
        mine.cancel()
        other.cancel()
    assert (edge.status_code, edge.json()["version"], fleet.json()["version"]) == (200, 2, 3)
    assert policy_pb2.Policy.FromString(first.policy).version == 1
    assert [p.version for p in pushed_to_mine] == [2, 3]
    assert {(p.scope, p.scope_id) for p in pushed_to_mine} == {(policy_pb2.POLICY_SCOPE_EDGE, "gw-1")}
    person = next(b for b in pushed_to_mine[1].mining.uncertainty_bands if b.label == "person")
    assert (round(person.low, 3), round(person.high, 3), pushed_to_mine[1].uplink.jpeg_quality) == (0.1, 0.9, 60)
    assert (pushed_to_other.version, pushed_to_other.scope) == (3, policy_pb2.POLICY_SCOPE_FLEET)


async def test_an_invalid_policy_is_refused_with_its_field_path_and_counted(tmp_path: Path, clip: Path) -> None:
    async with running(admin_config(tmp_path, clip)) as service:
        base = f"http://127.0.0.1:{service.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
            refused = await client.put("/policies/fleet", content="mining:\n  default_band: {low: 0.2, high: 1.7}\n")
            garbled = await client.put("/policies/edges/gw-1", content="mining: [unclosed")
            policies = (await client.get("/policies")).json()
    assert refused.status_code == 422
    assert [d["loc"] for d in refused.json()["detail"]] == ["mining.default_band.high"]
    assert "1.7" in refused.json()["detail"][0]["msg"]
    assert garbled.status_code == 422
    assert policies["version"] == 1 and policies["edges"] == {}
    assert counter(service, "edgeglm_cloud_policies_rejected_total") == 2
    assert counter(service, "edgeglm_cloud_policies_published_total", scope="fleet") == 0


async def test_health_metrics_and_fleet_status_are_served(tmp_path: Path, clip: Path) -> None:
    async with running(admin_config(tmp_path, clip)) as service, channel(service) as stub:
        call, _ = await open_session(stub, "gw-1")
        await call.write(session_pb2.EdgeMessage(sample=make_sample(clip, busy_frames(clip)[0], "s-admin", "gw-1")))
        await read(call)
        await read(call)
        base = f"http://127.0.0.1:{service.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT_S) as client:
            health = await client.get("/healthz")
            metrics = (await client.get("/metrics")).text
            edges = (await client.get("/edges")).json()
        call.cancel()
    assert (health.status_code, health.json()["status"]) == (200, "SERVING")
    assert 'edgeglm_cloud_verdicts_sent_total{decision="confirmed"} 1.0' in metrics
    assert "edgeglm_cloud_sessions_open 1.0" in metrics
    assert [(e["edge_id"], e["connected"], e["samples"]) for e in edges] == [("gw-1", True, 1)]


async def test_policy_set_command_publishes_through_the_running_service(tmp_path: Path, clip: Path) -> None:
    settings = tmp_path / "edge-policy.yaml"
    settings.write_text(EDGE_BANDS)
    bad = tmp_path / "bad-policy.yaml"
    bad.write_text("gate: {changed_area_fraction: 1.7}\n")
    runner = CliRunner()
    async with running(admin_config(tmp_path, clip)) as service:
        admin = f"http://127.0.0.1:{service.admin_port}"
        ok = await asyncio.to_thread(
            runner.invoke, cloud_app, ["policy", "set", str(settings), "--edge", "gw-9", "--admin", admin]
        )
        refused = await asyncio.to_thread(runner.invoke, cloud_app, ["policy", "set", str(bad), "--admin", admin])
        assert service.policy is not None
        snapshot = service.policy.snapshot()
    assert ok.exit_code == 0, ok.output
    assert "policy v2 published (edge gw-9)" in ok.stdout
    assert snapshot["edges"]["gw-9"]["settings"] == {"mining": {"bands": {"person": {"low": 0.1, "high": 0.9}}}}
    assert refused.exit_code == 1
    assert "gate.changed_area_fraction" in refused.stderr
