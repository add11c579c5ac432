"""The outbox on a small tmpfs that fills up while the agent runs, then frees again.

While the disk is full: detection and local events go on, the samples that cannot be stored are
dropped and counted with their reason, /readyz says degraded, the uplink stays up. When space
returns it all recovers by itself: samples are stored and judged again, /readyz is ready.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from tests.helpers.agents import cloud_config, edge_config, every_frame, make_agent_clip
from tests.helpers.cloud import running
from tests.helpers.disk import fill, small_tmpfs
from tests.helpers.wait import wait_until

WAIT_S = 60.0


def counter(agent: EdgeAgent, name: str, **labels: str) -> float:
    return agent.metrics.registry.get_sample_value(name, labels) or 0.0


def readiness(agent: EdgeAgent) -> dict[str, Any]:
    url = f"http://127.0.0.1:{agent.health.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            body: dict[str, Any] = json.loads(reply.read())
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
    return body


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_a_full_disk_under_the_outbox_degrades_and_recovers_by_itself(tmp_path: Path, clip: Path) -> None:
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    with small_tmpfs(tmp_path / "small-disk") as disk:
        settings = every_frame()
        async with running(cloud_config(tmp_path, clip, settings)) as service:
            dumped = edge_config(
                tmp_path, clip, service.port, "gw-disk", loop=True, initial=settings, ask="per_frame"
            ).model_dump(mode="json")
            dumped["outbox"] = {**dumped["outbox"], "path": str(disk / "outbox.sqlite")}
            agent = EdgeAgent(EdgeConfig.model_validate(dumped))
            events = agent.config.state_dir / "events.jsonl"
            stop = asyncio.Event()
            agent_task = asyncio.create_task(agent.run(stop))
            try:
                await wait_until(
                    lambda: counter(agent, "edgeglm_edge_verdicts_total", decision="confirmed") > 0, "verdicts"
                )
                filler = fill(disk)
                await wait_until(
                    lambda: counter(agent, "edgeglm_edge_samples_dropped_total", reason="outbox_unavailable") >= 3,
                    "samples dropped for the full disk",
                )
                ready = await asyncio.to_thread(readiness, agent)
                assert ready["state"] == "degraded", ready
                assert not ready["ready"]
                assert any("outbox unavailable" in reason for reason in ready["reasons"]), ready
                detected, written = counter(agent, "edgeglm_edge_frames_detected_total", camera="cam0"), lines(events)
                await wait_until(
                    lambda: (
                        counter(agent, "edgeglm_edge_frames_detected_total", camera="cam0") > detected + 5
                        and lines(events) > written
                    ),
                    "detection and local events going on with the disk full",
                )
                assert agent.uplink.cloud_reachable
                assert not agent_task.done()

                filler.unlink()
                verdicts = counter(agent, "edgeglm_edge_verdicts_total", decision="confirmed")
                await wait_until(
                    lambda: counter(agent, "edgeglm_edge_verdicts_total", decision="confirmed") > verdicts + 2,
                    "samples stored and judged again once space returned",
                )
                await wait_until(lambda: readiness(agent)["state"] == "online", "ready again")
            finally:
                stop.set()
                await asyncio.wait_for(agent_task, WAIT_S)
    assert counter(agent, "edgeglm_edge_task_failures_total", task="detect") == 0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))
