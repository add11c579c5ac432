"""An agent process killed with SIGKILL mid-run and started again loses no mined sample."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from cloud.service import CloudService
from sim.world.clips import ClipSpec, write_clip
from tests.helpers.agents import cloud_config, edge_config, every_frame
from tests.helpers.broker import MosquittoBroker, free_port

WAIT_S = 60.0


def outbox_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT sample_id FROM outbox")}


def start_agent(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(config_path)], stdout=handle, stderr=handle
        )


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
    edge = edge_config(tmp_path, clip, port, "gw-kill", loop=True, initial=settings, broker=broker)
    config_path = tmp_path / "edge.yaml"
    config_path.write_text(yaml.safe_dump(edge.model_dump(mode="json")))
    outbox = tmp_path / "gw-kill" / "outbox.sqlite"
    log = tmp_path / "edge.log"
    try:
        process = start_agent(config_path, log)
        for _ in range(int(WAIT_S / 0.1)):
            if outbox.exists() and len(outbox_ids(outbox)) >= 5 and await service.store.count() >= 1:
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        waiting = outbox_ids(outbox)
        assert len(waiting) >= 5, log.read_text()
        process = start_agent(config_path, log)
        for _ in range(int(WAIT_S / 0.1)):
            stored = {sample_id for sample_id in waiting if await service.store.get(sample_id) is not None}
            if stored == waiting:
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await service.stop()
    assert stored == waiting, f"lost after the kill: {sorted(waiting - stored)[:5]}"
