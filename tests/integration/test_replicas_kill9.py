"""Two cloud replicas on one PostgreSQL, edges spread over them, one replica SIGKILLed mid-run: the
survivor takes its edges, and every sample mined ends with one real verdict (on gRPC and on MQTT).

Real parts: Debian's PostgreSQL (a throwaway cluster), both replicas as their own processes
(`python -m cloud serve`), real edge agents detecting on a generated clip, Debian's mosquitto for
MQTT (both replicas' bridges in one shared subscription). On gRPC each edge knows both replicas
(an `ipv4:` target, its own first), so a dead replica's edge reconnects to the other.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cloud.config import CloudConfig
from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from protos import verdict_pb2
from sim.world.clips import ClipSpec, write_clip
from tests.helpers.agents import cloud_config, edge_config, every_frame
from tests.helpers.broker import MosquittoBroker, free_port
from tests.helpers.delivery import CloudProcess, outbox_ids
from tests.helpers.postgres import PostgresServer
from tests.helpers.wait import wait_until

WAIT_S = 120.0
EDGES = ("gw-a", "gw-b")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    return write_clip(ClipSpec(seed=3, seconds=12, fps=5, quiet_start_seconds=0.2, mean_gap_seconds=1.0), folder)


def replica_config(
    tmp_path: Path, clip: Path, name: str, dsn_file: Path, broker: MosquittoBroker | None
) -> CloudConfig:
    dumped = cloud_config(tmp_path, clip, every_frame(), broker).model_dump(mode="json")
    dumped["server"] = {**dumped["server"], "port": free_port()}
    dumped["backend"] = {**dumped["backend"], "delay_ms": 60, "jitter_ms": 40}
    dumped["store"] = {"kind": "postgres", "dsn_file": str(dsn_file), "path": str(tmp_path / name / "verdicts.sqlite")}
    if broker is not None:
        dumped["mqtt"] = {**dumped["mqtt"], "client_id": f"edgeglm-cloud-{name}"}
    return CloudConfig.model_validate(dumped)


def agent_config(
    tmp_path: Path, clip: Path, edge_id: str, ports: list[int], broker: MosquittoBroker | None
) -> EdgeConfig:
    edge = edge_config(
        tmp_path, clip, ports[0], edge_id, loop=True, initial=every_frame(), broker=broker, ask="per_frame"
    )
    dumped = edge.model_dump(mode="json")
    if broker is None:
        targets = ",".join(f"127.0.0.1:{port}" for port in ports)  # its own replica first, the other next
        dumped["uplink"] = {**dumped["uplink"], "target": f"ipv4:{targets}", "load_balancing": "pick_first"}
    dumped["pipeline"]["drain_deadline_s"] = 90
    dumped["outbox"] = {**dumped["outbox"], "ack_timeout_s": 5, "verdict_timeout_s": 10}
    return EdgeConfig.model_validate(dumped)


def judging_replicas(dsn: str) -> int:
    """How many replicas have judged samples into the store (the claims they left)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT COUNT(DISTINCT claimed_by) FROM verdicts WHERE verdict IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def stored(dsn: str) -> dict[str, tuple[str, int]]:
    """sample_id -> (edge_id, origin) of every verdict in the shared store."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT sample_id, edge_id, verdict FROM verdicts WHERE verdict IS NOT NULL").fetchall()
    return {s: (e, verdict_pb2.Verdict.FromString(bytes(v)).origin) for s, e, v in rows}


@pytest.mark.slow
async def test_a_replica_killed_mid_run_loses_no_sample_and_the_survivor_takes_its_edges(
    postgres: PostgresServer, tmp_path: Path, long_clip: Path, broker: MosquittoBroker | None
) -> None:
    dsn = postgres.new_dsn()
    dsn_file = tmp_path / "pg-dsn"
    dsn_file.write_text(dsn)
    a = CloudProcess(replica_config(tmp_path, long_clip, "a", dsn_file, broker), tmp_path / "a")
    b = CloudProcess(replica_config(tmp_path, long_clip, "b", dsn_file, broker), tmp_path / "b")
    await a.start()
    await b.start()
    orders = ([a.port, b.port], [b.port, a.port])  # gw-a on A, gw-b on B, each knowing the other
    agents = [EdgeAgent(agent_config(tmp_path, long_clip, e, o, broker)) for e, o in zip(EDGES, orders, strict=True)]
    stop = asyncio.Event()
    runs = [asyncio.create_task(agent.run(stop)) for agent in agents]
    try:
        await wait_until(
            lambda: len(stored(dsn)) >= 20 and judging_replicas(dsn) == 2, "both replicas judging", timeout_s=WAIT_S
        )
        a.kill()  # SIGKILL: whatever it was judging, claiming or sending
        before = len(stored(dsn))
        await wait_until(lambda: len(stored(dsn)) >= before + 20, "the survivor judging on", timeout_s=WAIT_S)
        stop.set()  # the agents drain: they wait, with B up, for the verdicts of all they hold
        await asyncio.wait_for(asyncio.gather(*runs), WAIT_S)
    finally:
        for run in runs:
            if not run.done():
                run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        a.kill()
        code = b.stop()
    assert code == 0, b.log()
    verdicts = stored(dsn)
    for agent in agents:
        summary: dict[str, Any] = json.loads((agent.config.state_dir / "summary.json").read_text())
        mine = {s: origin for s, (edge, origin) in verdicts.items() if edge == agent.config.edge_id}
        left = outbox_ids(agent.config.state_dir / "outbox.sqlite")
        assert summary["samples_mined"] > 10, summary
        assert not left, f"{agent.config.edge_id}: {len(left)} samples left in the outbox\n{b.log()}"
        assert len(mine) == summary["samples_mined"], f"{agent.config.edge_id}: mined {summary['samples_mined']}"
        assert set(mine.values()) == {verdict_pb2.VERDICT_ORIGIN_BACKEND}
