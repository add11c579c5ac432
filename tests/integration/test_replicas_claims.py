"""Two cloud replicas on one PostgreSQL database judge a sample once (issue 14 §2, its first guarantee).

Real services (grpc.aio servers, the oracle backend slowed so a judgement takes a while), one real
PostgreSQL. An edge sends a sample to replica A and, before A's verdict, sends it again to replica B
(it reconnected there): B waits for A's verdict instead of judging it a second time, and both
sessions get that one verdict. A replica renews its claims while it judges, so a judgement may take
longer than the lease; one that holds a claim and dies frees the sample when its claim lapses: the
edge is told to send it again, and the resend is judged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from cloud.service import CloudService
from cloud.store import VerdictStore
from cloud.store.pg import PgPool
from protos import sample_pb2, session_pb2, verdict_pb2
from tests.helpers.cloud import WAIT_S, busy_frames, channel, counter, make_config, make_sample, open_session, running
from tests.helpers.postgres import PostgresServer
from tests.helpers.wait import wait_until

JUDGING_MS = 1500  # the oracle's time per batch: long enough for the resend to arrive while A judges


@asynccontextmanager
async def replicas(
    tmp_path: Path, clip: Path, dsn: str, count: int, **ingest: float
) -> AsyncIterator[list[CloudService]]:
    dsn_file = tmp_path / "pg-dsn"
    dsn_file.write_text(dsn)
    async with AsyncExitStack() as stack:
        services = []
        for n in range(count):
            config = make_config(
                tmp_path / f"replica-{n}",
                clip,
                store={"kind": "postgres", "dsn_file": str(dsn_file)},
                backend={"delay_ms": JUDGING_MS},
                ingest=ingest,
            )
            services.append(await stack.enter_async_context(running(config)))
        yield services


async def answers(service: CloudService, sample: sample_pb2.Sample, until: str) -> list[session_pb2.CloudMessage]:
    """Send `sample` on a new session to `service`; the messages after the policy, up to the first `until`."""
    seen = []
    async with channel(service) as stub:
        call, _ = await open_session(stub, "gw-1")
        await call.write(session_pb2.EdgeMessage(sample=sample))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(call.read(), WAIT_S)
            seen.append(message)
            kind = message.WhichOneof("kind")
            if kind == until or (until == "deferral" and kind == "ack" and message.ack.retry_after_ms > 0):
                break
        call.cancel()
    return seen


async def claimed(dsn: str) -> None:
    """Until some replica has claimed a sample in the database `dsn` names."""
    store = VerdictStore(database=PgPool(dsn, "check"))
    try:
        await wait_until(
            lambda: store.database.run(
                "claimed", lambda conn: conn.execute("SELECT claimed_by FROM verdicts").fetchone()
            ),
            "a replica's claim",
            WAIT_S,
        )
    finally:
        await store.close()


def judged(services: list[CloudService]) -> float:
    return sum(counter(s, "edgeglm_inference_batch_size_sum", backend="oracle") for s in services)


async def test_a_resend_to_another_replica_waits_for_the_first_replicas_verdict(
    postgres: PostgresServer, tmp_path: Path, clip: Path
) -> None:
    sample = make_sample(clip, busy_frames(clip)[0], "door-001")
    async with replicas(tmp_path, clip, postgres.new_dsn(), 2) as (a, b):
        first = asyncio.create_task(answers(a, sample, "verdict"))
        await claimed(postgres.dsn(a.store.where.rsplit("/", 1)[1]))  # A judges it before B hears of it
        on_b = await answers(b, sample, "verdict")
        on_a = await first
        assert counter(b, "edgeglm_cloud_samples_judged_elsewhere_total") == 1
        assert judged([a, b]) == 1, "one judgement across both replicas"
        assert await a.store.count() == 1
    verdicts = [m.verdict for m in on_a + on_b if m.WhichOneof("kind") == "verdict"]
    assert len(verdicts) == 2 and verdicts[0] == verdicts[1]
    assert verdicts[0].origin == verdict_pb2.VERDICT_ORIGIN_BACKEND
    acks = [m.ack for m in on_b if m.WhichOneof("kind") == "ack"]
    assert acks[0].accepted and acks[0].duplicate


async def test_a_judgement_longer_than_the_lease_keeps_its_claim_while_its_replica_lives(
    postgres: PostgresServer, tmp_path: Path, clip: Path
) -> None:
    """A judges for 1.5 s under a 1 s lease: it renews its claim meanwhile, so B, asked again, still waits for
    A's verdict rather than taking the sample over (and judging it a second time)."""
    sample = make_sample(clip, busy_frames(clip)[2], "door-003")
    dsn = postgres.new_dsn()
    async with replicas(tmp_path, clip, dsn, 2, claim_lease_s=1.0, claim_poll_s=0.05) as (a, b):
        first = asyncio.create_task(answers(a, sample, "verdict"))
        await claimed(dsn)  # A judges it before B hears of it
        on_b = await answers(b, sample, "verdict")
        await first
        assert counter(b, "edgeglm_cloud_samples_deferred_total", reason="claim_lapsed") == 0
        assert judged([a, b]) == 1, "one judgement, though it took longer than the lease"
    assert on_b[-1].verdict.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND


async def test_a_claim_of_a_replica_that_died_lapses_and_the_resend_is_judged(
    postgres: PostgresServer, tmp_path: Path, clip: Path
) -> None:
    sample = make_sample(clip, busy_frames(clip)[1], "door-002")
    dsn = postgres.new_dsn()
    async with replicas(tmp_path, clip, dsn, 1, claim_lease_s=1.0, claim_poll_s=0.05) as (b,):
        # A replica took the sample and died: its claim row is all that is left of it.
        dead = VerdictStore(database=PgPool(dsn, "dead replica"))
        try:
            assert (await dead.claim("door-002", "gw-1", "replica-dead", lease_s=1.5)).state == "mine"
        finally:
            await dead.close()
        told = await answers(b, sample, "deferral")
        again = await answers(b, sample, "verdict")
        assert counter(b, "edgeglm_cloud_samples_deferred_total", reason="claim_lapsed") == 1
        assert judged([b]) == 1
    deferral = told[-1].ack
    assert not deferral.accepted and "send it again" in deferral.error
    assert again[-1].verdict.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND
