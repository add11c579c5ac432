"""The whole loop in one process: a real cloud service (grpc.aio on a free port, oracle backend) and
real edge agents on generated clips, talking over loopback gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud.config import CloudConfig
from cloud.service import CloudService
from edge.agent import EdgeAgent
from edge.status import counter_total
from protos import verdict_pb2
from tests.helpers.agents import SILENT, WATCH_ALL, cloud_config, edge_config, make_agent_clip
from tests.helpers.broker import MosquittoBroker
from tests.helpers.policy_keys import generate_keypair
from tests.helpers.wait import wait_until

WAIT_S = 60.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))


@contextlib.asynccontextmanager
async def cloud(config: CloudConfig) -> AsyncIterator[CloudService]:
    service = CloudService(config)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def run_to_end(agent: EdgeAgent) -> dict[str, Any]:
    await asyncio.wait_for(agent.run(asyncio.Event()), timeout=WAIT_S)
    summary: dict[str, Any] = json.loads((agent.config.state_dir / "summary.json").read_text())
    return summary


async def test_every_sample_sent_gets_its_verdict(tmp_path: Path, clip: Path, broker: MosquittoBroker | None) -> None:
    async with cloud(cloud_config(tmp_path, clip, WATCH_ALL, broker)) as service:
        agents = [EdgeAgent(edge_config(tmp_path, clip, service.port, f"gw-{i}", broker=broker)) for i in range(2)]
        summaries = await asyncio.gather(*(run_to_end(agent) for agent in agents))
        stored = await service.store.count()
        confirmed = service.metrics.verdicts_sent.labels("confirmed")._value.get()
    for summary in summaries:
        assert summary["frames_read"] == 40
        assert summary["frames_dropped"] == 0
        assert summary["frames_gated"] + summary["frames_detected"] == 40
        assert summary["samples_sent"] > 0
        assert summary["verdicts"] == summary["samples_sent"]
        assert summary["samples_unacknowledged"] == 0
        assert summary["policy_version"] >= 1
        assert len(summary["verdict_latency_ms"]) == summary["samples_sent"]
    assert stored == sum(s["samples_sent"] for s in summaries)
    assert confirmed > 0, "the oracle confirms what the edge saw of real objects"
    events = [json.loads(line) for line in (tmp_path / "gw-0" / "events.jsonl").read_text().splitlines()]
    assert events
    assert {e["source"] for e in events} <= {"edge", "cloud"}


async def test_policy_set_midway_reaches_the_agent_and_changes_what_it_mines(
    tmp_path: Path, clip: Path, broker: MosquittoBroker | None
) -> None:
    async with cloud(cloud_config(tmp_path, clip, SILENT, broker)) as service:
        # Silent from the first frame (built-in policy too), so every sample mined is the new policy's doing.
        agent = EdgeAgent(
            edge_config(tmp_path, clip, service.port, "gw-live", loop=True, initial=SILENT, broker=broker)
        )
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        engine = service.policy
        assert engine is not None
        try:
            first = engine.version_for("gw-live")
            await wait_until(lambda: agent.policy.version == first, "the first policy")
            await wait_until(lambda: counter_total(agent.metrics.frames_detected) >= 20, "frames detected")
            assert counter_total(agent.metrics.mined) == 0
            second = await engine.set_fleet(WATCH_ALL)
            assert second > first
            await wait_until(lambda: agent.policy.version == second, "the new policy on the agent")
            assert agent.policy.mining.watch_list == ("person", "cat", "motorcycle", "cup", "rocket")
            await wait_until(lambda: counter_total(agent.metrics.mined) > 0, "samples mined under the new policy")
            await wait_until(lambda: counter_total(agent.metrics.verdicts) > 0, "verdicts for them")
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=WAIT_S)
    restarted = EdgeAgent(edge_config(tmp_path, clip, 1, "gw-live"))
    restarted.policies.load()
    assert restarted.policy.version == second
    assert restarted.policy.mining.watch_list == ("person", "cat", "motorcycle", "cup", "rocket")


async def test_agent_keeps_deciding_when_the_cloud_is_unreachable(tmp_path: Path, clip: Path) -> None:
    # Nothing listens on this port: the agent runs on its built-in policy and records local events.
    generate_keypair(tmp_path / "keys", "policy-signing")
    config = edge_config(tmp_path, clip, 9, "gw-alone")
    config = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"drain_deadline_s": 1})})
    agent = EdgeAgent(config)
    summary = await run_to_end(agent)
    assert summary["frames_read"] == 40
    assert summary["verdicts"] == 0
    assert counter_total(agent.metrics.decisions_without_cloud) > 0
    events = (tmp_path / "gw-alone" / "events.jsonl").read_text().splitlines()
    assert events, "confident detections become local events without the cloud"


async def test_per_frame_asking_sends_a_lingering_object_once_per_resend_interval(tmp_path: Path, clip: Path) -> None:
    sent: dict[float, int] = {}
    dropped: dict[float, float] = {}
    for interval in (0.0, 3600.0):
        settings = {"mining": {**WATCH_ALL["mining"], "resend_interval_s": interval}}
        async with cloud(cloud_config(tmp_path / str(interval), clip, settings)) as service:
            edge_id = f"gw-{interval:.0f}"
            config = edge_config(
                tmp_path / str(interval), clip, service.port, edge_id, initial=settings, ask="per_frame"
            )
            agent = EdgeAgent(config)
            summary = await run_to_end(agent)
            sent[interval] = summary["samples_sent"]
            dropped[interval] = agent.metrics.samples_dropped.labels("resend_interval")._value.get()
    # Without an interval every frame showing a watched label goes up; with one, each camera/label set once.
    assert dropped[0.0] == 0
    assert sent[3600.0] < sent[0.0]
    assert sent[3600.0] + dropped[3600.0] == sent[0.0]


async def test_per_track_asking_asks_each_object_once_and_its_verdict_makes_one_new_per_track(
    tmp_path: Path, clip: Path
) -> None:
    """The same watch-everything policy per frame (no interval) and per track, side by side on one clip."""
    settings = {"mining": {**WATCH_ALL["mining"], "resend_interval_s": 0.0}}
    sent: dict[str, int] = {}
    for ask in ("per_frame", "per_track"):
        async with cloud(cloud_config(tmp_path / ask, clip, settings)) as service:
            agent = EdgeAgent(edge_config(tmp_path / ask, clip, service.port, f"gw-{ask}", initial=settings, ask=ask))
            summary = await run_to_end(agent)
            sent[ask] = summary["samples_sent"]
            page = await service.store.list_verdicts(limit=500)
            stored = [await service.store.get(r.sample_id, r.edge_id) for r in page.items]
        assert summary["verdicts"] == summary["samples_sent"] > 0
        if ask == "per_track":
            tracks = [verdict_pb2.Verdict.FromString(raw).track_id for raw in stored if raw is not None]
            assert len(tracks) == sent[ask]
            assert all(tracks), "every question names the object it is about"
            assert len(set(tracks)) == len(tracks), f"an object asked twice: {sorted(tracks)}"
            events = [
                json.loads(line) for line in (tmp_path / ask / f"gw-{ask}" / "events.jsonl").read_text().splitlines()
            ]
            news = [e["id"] for e in events if e["type"] == "new"]
            assert news and len(news) == len(set(news)), "one new per object"
            ends = {e["id"] for e in events if e["type"] == "end"}
            assert ends == {e["id"] for e in events if e["verdict"] != "rejected"}, "every announced object ends"
    assert sent["per_track"] * 3 < sent["per_frame"], sent
