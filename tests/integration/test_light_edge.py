"""One lightweight simulated edge (the agent's dispatcher and gRPC uplink) against a real grpc.aio
server whose Session follows a script: it resends what a broken stream left unanswered, sends again
what was deferred, drops what was refused, and counts duplicates, losses and wrong verdicts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from edge.config import OutboxConfig
from sim.fleet.light_config import LightFleetConfig
from sim.fleet.light_edge import FleetTally, LightEdge
from sim.fleet.light_samples import PreparedCrop, TrueObject
from tests.helpers.scripted_cloud import Script, ScriptedCloud, scripted_cloud

EDGE = "light-00007"
PERSON = TrueObject(0, "person", (10, 10, 60, 120))
BUSY = PreparedCrop(3, b"\xff\xd8busy\xff\xd9", (0, 0, 160, 160), (640, 480), (PERSON,), "confirmed", 80)
EMPTY = PreparedCrop(1, b"\xff\xd8empty\xff\xd9", (100, 100, 260, 260), (640, 480), (), "rejected", 80)
# The edge ends by itself once every sample is answered; this only bounds a run that would not.
DEADLINE_S = 60.0


def sample_id(n: int) -> str:
    return f"{EDGE}-{n:06d}"


def config(**overrides: Any) -> LightFleetConfig:
    settings: dict[str, Any] = {
        "edges": 1,
        "cameras_per_edge": 2,
        "samples_per_edge": 6,
        "rate_per_edge_hz": 20.0,
        "dispatch_poll_s": 0.05,
    }
    return LightFleetConfig(**(settings | overrides))


async def run_edge(cloud: ScriptedCloud, settings: LightFleetConfig, deadline_s: float = DEADLINE_S) -> FleetTally:
    tally = FleetTally()
    edge = LightEdge(EDGE, [[BUSY], [EMPTY]], settings, tally, settings.uplink_to(f"127.0.0.1:{cloud.port}"))
    now = time.monotonic()
    await asyncio.wait_for(edge.run(now, now + deadline_s), deadline_s + 10)
    edge.account_end()
    return tally


async def test_a_light_edge_resends_what_its_broken_stream_left_unanswered() -> None:
    async with scripted_cloud(Script(break_on={sample_id(2)})) as cloud:  # dies on the third sample
        tally = await run_edge(cloud, config())

    assert cloud.hellos == [EDGE, EDGE]
    received = cloud.received()
    assert set(received) == {sample_id(n) for n in range(6)}
    assert received[sample_id(2)] == 2  # sent again under the same id, on the new stream
    assert (tally.sessions_opened, tally.queued, tally.unique_sent) == (2, 6, 6)
    assert tally.by_label("edgeglm_edge_samples_resent")["unanswered"] >= 1
    assert tally.sends >= sum(received.values())
    assert tally.bytes_sent > 0
    assert (tally.verdicts, tally.lost, tally.unsent, tally.duplicates) == (6, 0, 0, 0)
    assert (tally.correct, tally.wrong) == (6, 0)
    assert tally.decisions == {"confirmed": 3, "rejected": 3}  # cameras alternate: busy, empty, busy, ...
    assert len(tally.latencies_ms) == 6


async def test_a_second_verdict_counts_as_duplicate_and_a_missing_one_as_lost() -> None:
    script = Script(twice={sample_id(1)}, never_answer={sample_id(4)})
    # A verdict late by half a second is sent again; the run ends at its deadline still without it.
    settings = config(outbox=OutboxConfig(verdict_timeout_s=0.5))
    async with scripted_cloud(script) as cloud:
        tally = await run_edge(cloud, settings, deadline_s=3.0)

    assert (tally.verdicts, tally.duplicates, tally.lost, tally.unsent) == (5, 1, 1, 0)
    assert tally.lost_examples == [sample_id(4)]
    assert cloud.received()[sample_id(4)] >= 2
    assert tally.by_label("edgeglm_edge_samples_resent")["no_verdict"] >= 1
    assert tally.sessions_opened == 1  # waiting for a verdict is not a reason to reconnect


async def test_a_verdict_other_than_the_ground_truth_one_counts_as_wrong() -> None:
    async with scripted_cloud(Script(flip={sample_id(0)})) as cloud:
        tally = await run_edge(cloud, config())

    assert (tally.correct, tally.wrong) == (5, 1)
    assert tally.wrong_examples == [f"{sample_id(0)}: expected confirmed, got rejected"]


async def test_a_deferred_sample_goes_again_after_its_retry_after_and_a_refused_one_is_not_waited_for() -> None:
    script = Script(defer_once={sample_id(1)}, refuse={sample_id(3)}, defer_ms=100)
    async with scripted_cloud(script) as cloud:
        tally = await run_edge(cloud, config())

    received = cloud.received()
    assert (received[sample_id(1)], received[sample_id(3)]) == (2, 1)
    assert tally.by_label("edgeglm_edge_samples_deferred") == {"overloaded": 1}
    assert tally.by_label("edgeglm_edge_acks") == {"accepted": 5, "deferred": 1, "refused": 1}
    assert tally.by_label("edgeglm_edge_samples_dropped") == {"cloud_refused": 1}
    assert (tally.verdicts, tally.refused, tally.lost, tally.unsent, tally.unique_sent) == (5, 1, 0, 0, 6)
    assert (tally.correct, tally.wrong) == (5, 0)
