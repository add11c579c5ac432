"""An agent process killed with SIGKILL mid-run and started again loses no mined sample."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloud.service import CloudService
from sim.world.clips import ClipSpec, write_clip
from tests.helpers.agents import cloud_config, edge_config, every_frame
from tests.helpers.broker import MosquittoBroker, free_port
from tests.helpers.wait import wait_until

WAIT_S = 60.0


def outbox_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT sample_id FROM outbox")}


def start_agent(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(config_path)], stdout=handle, stderr=handle
        )


@pytest.mark.slow
async def test_agent_killed_mid_run_resends_everything_after_restart(
    tmp_path: Path, broker: MosquittoBroker | None
) -> None:
    clip = write_clip(ClipSpec(seed=0, seconds=8, fps=5, quiet_start_seconds=0.5, mean_gap_seconds=1.5), tmp_path / "c")
    port = free_port()
    # A slow uplink keeps a backlog in the outbox, so the kill lands while samples wait there.
    settings = every_frame(rate=120_000)
    config = cloud_config(tmp_path, clip, settings, broker)
    config = config.model_copy(update={"server": config.server.model_copy(update={"port": port})})
    service = CloudService(config)
    await service.start()
    edge = edge_config(tmp_path, clip, port, "gw-kill", loop=True, initial=settings, broker=broker, ask="per_frame")
    config_path = tmp_path / "edge.yaml"
    config_path.write_text(yaml.safe_dump(edge.model_dump(mode="json")))
    outbox = tmp_path / "gw-kill" / "outbox.sqlite"
    log = tmp_path / "edge.log"
    try:
        process = start_agent(config_path, log)

        async def backlog_and_a_verdict() -> bool:
            try:
                backlog = len(outbox_ids(outbox)) if outbox.exists() else 0
            except sqlite3.OperationalError:  # the file is there, its table not yet
                return False
            return backlog >= 5 and await service.store.count() >= 1

        await wait_until(backlog_and_a_verdict, lambda: f"a backlog and a first verdict:\n{log.read_text()}", WAIT_S)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        waiting = outbox_ids(outbox)
        assert len(waiting) >= 5, log.read_text()
        process = start_agent(config_path, log)
        stored: set[str] = set()

        async def all_stored() -> bool:
            for sample_id in waiting - stored:
                if await service.store.get(sample_id, "gw-kill") is not None:
                    stored.add(sample_id)
            return stored == waiting

        await wait_until(all_stored, lambda: f"every sample resent; lost: {sorted(waiting - stored)[:5]}", WAIT_S)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await service.stop()
    assert stored == waiting, f"lost after the kill: {sorted(waiting - stored)[:5]}"
