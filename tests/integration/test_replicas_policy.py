"""Replicas on one PostgreSQL share the policy state (issue 14 §2): a change through one reaches the
edges of the other (pushed on its LISTEN/NOTIFY, not on a timer), versions stay distinct and
increasing under changes on both at once, and a replica that restarts keeps what the admin API
changed while cloud.yaml did not change; one replica runs the closed loop over every replica's pairs
and rule outcomes.

Real services (grpc.aio servers) on a real PostgreSQL; edges are Session streams on real channels.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from cloud.config import CloudConfig
from cloud.policy.evidence import MOTION
from cloud.policy.shared import PgPolicyState, StoredLayer
from cloud.service import CloudService
from protos import policy_pb2, sample_pb2
from tests.helpers.cloud import (
    busy_frames,
    channel,
    make_config,
    make_sample,
    open_session,
    read,
    running,
    send,
    send_samples,
)
from tests.helpers.postgres import PostgresServer
from tests.helpers.wait import wait_until


def replica(tmp_path: Path, clip: Path, dsn_file: Path, name: str) -> CloudConfig:
    # One signing key for the fleet (the edges trust one), each replica its own folder.
    keys = {"signing_key": str(tmp_path / "keys" / "policy-signing.key"), "create_signing_key": True}
    return make_config(tmp_path / name, clip, store={"kind": "postgres", "dsn_file": str(dsn_file)}, policy=keys)


@asynccontextmanager
async def replicas(tmp_path: Path, clip: Path, dsn: str, names: tuple[str, ...]) -> AsyncIterator[list[CloudService]]:
    dsn_file = tmp_path / "pg-dsn"
    dsn_file.write_text(dsn)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running(replica(tmp_path, clip, dsn_file, n))) for n in names]


def policy_version(signed: policy_pb2.SignedPolicy) -> int:
    return policy_pb2.Policy.FromString(signed.policy).version


async def test_a_change_through_one_replica_reaches_the_edges_of_the_other(
    postgres: PostgresServer, tmp_path: Path, clip: Path
) -> None:
    async with replicas(tmp_path, clip, postgres.new_dsn(), ("a", "b")) as (a, b):
        assert a.policy is not None and b.policy is not None
        async with channel(b) as stub:
            call, first = await open_session(stub, "gw-on-b")
            version = await a.policy.set_fleet({"uplink": {"jpeg_quality": 61}})
            pushed = await asyncio.wait_for(read(call), 10)  # a bound, not a measurement
            call.cancel()
        assert policy_version(first) < version
        assert pushed.WhichOneof("kind") == "policy" and policy_version(pushed.policy) == version
        assert b.policy.fleet.uplink.jpeg_quality == 61


async def test_versions_stay_distinct_under_changes_on_both_and_a_restart_keeps_api_changes(
    postgres: PostgresServer, tmp_path: Path, clip: Path
) -> None:
    dsn = postgres.new_dsn()
    async with replicas(tmp_path, clip, dsn, ("a", "b")) as (a, b):
        assert a.policy is not None and b.policy is not None
        changes: list[Any] = [a.policy.set_edge(f"gw-{n}", {"uplink": {"jpeg_quality": 50 + n}}) for n in range(5)]
        changes += [b.policy.set_edge(f"gw-{n}", {"uplink": {"jpeg_quality": 70 + n}}) for n in range(5, 10)]
        versions = await asyncio.gather(*changes)
        await a.policy.set_fleet({"uplink": {"jpeg_quality": 63}})
        for _ in range(200):  # both replicas settle on the same layers
            if a.policy.snapshot() == b.policy.snapshot():
                break
            await asyncio.sleep(0.02)
        same = a.policy.snapshot() == b.policy.snapshot()
        last = a.policy.version
    assert len(set(versions)) == 10, f"versions handed out twice: {sorted(versions)}"
    assert same, "the replicas disagree about the policy"
    async with replicas(tmp_path, clip, dsn, ("b",)) as (again,):
        assert again.policy is not None
        assert again.policy.fleet.uplink.jpeg_quality == 63, "cloud.yaml did not change: the API's change stays"
        assert again.policy.version == last, "nothing new to publish on a restart"
        assert again.policy.snapshot()["edges"]["gw-7"]["settings"] == {"uplink": {"jpeg_quality": 77}}


def test_a_catch_up_reads_only_the_layers_changed_since_the_last_one(postgres: PostgresServer) -> None:
    """A replica told of a change reads what changed since its last look, removals included, not every layer."""
    state = PgPolicyState(postgres.new_dsn(), "test")
    start, _ = state.load()
    first = state.publish("edge:gw-1", StoredLayer({"uplink": {"jpeg_quality": 61}}, 0, 1.0, "d1", ""), start)
    second = state.publish("edge:gw-2", StoredLayer({"uplink": {"jpeg_quality": 62}}, 0, 2.0, "d2", ""), first)
    last, after_first = state.load(first)
    removed = state.publish("edge:gw-1", StoredLayer(None, 0, 3.0, "removed", ""), second)
    _, after_second = state.load(second)
    _, everything = state.load()
    assert (last, set(after_first)) == (second, {"edge:gw-2"})
    assert after_second == {"edge:gw-1": StoredLayer(None, removed, 3.0, "removed", "")}
    assert set(everything) == {"edge:gw-1", "edge:gw-2"}


def motion_samples(clip: Path, edge_id: str, count: int) -> list[Any]:
    """Motion-without-detection samples (a judged outcome each for the motion rule)."""
    samples = []
    for frame in busy_frames(clip)[:count]:
        sample = make_sample(clip, frame, f"motion-{frame:03d}", edge_id)
        sample.ClearField("detections")
        sample.mined_reason = sample_pb2.MINED_REASON_MOTION_WITHOUT_DETECTION
        sample.motion_area_fraction = 0.002
        samples.append(sample)
    return samples


async def test_one_replica_runs_the_closed_loop_over_every_replicas_pairs_and_another_takes_over(
    postgres: PostgresServer, tmp_path: Path, clip: Path
) -> None:
    dsn_file = tmp_path / "pg-dsn"
    dsn_file.write_text(postgres.new_dsn())
    loop = {"closed_loop": {"enabled": True, "flush_interval_s": 0.2, "motion_min_samples": 40}}
    configs = []
    for name in ("a", "b"):
        config = replica(tmp_path, clip, dsn_file, name).model_dump(mode="json")
        config["policy"] = {**config["policy"], **loop}
        configs.append(CloudConfig.model_validate(config))
    frames = busy_frames(clip)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running(configs[0]))
        b = await stack.enter_async_context(running(configs[1]))
        await wait_until(lambda: [s.leads_loop for s in (a, b)].count(True) == 1, "one replica leads", timeout_s=30)
        leader, other = (a, b) if a.leads_loop else (b, a)
        await send(other, clip, "gw-on-other", frames[:4], "other")  # judged by the replica that does not lead
        await send(leader, clip, "gw-on-leader", frames[4:8], "leader")

        def seen(service: CloudService) -> set[str]:
            assert service.bands is not None
            return set(service.bands.snapshot()["edges"])

        await wait_until(lambda: {"gw-on-other", "gw-on-leader"} <= seen(leader), "the leader sees both", 30)
        assert seen(other) == set(), "a replica that does not lead keeps no windows"
        # The per-camera rules learn from every replica too: motion samples judged by the other one.
        await send_samples(other, "gw-on-other", motion_samples(clip, "gw-on-other", 6))

        def motion_evidence(service: CloudService) -> int:
            assert service.bands is not None
            rules = service.bands.snapshot()["rules"]
            return int(rules.get("gw-on-other", {}).get("cam0", {}).get(MOTION, {}).get("samples", 0))

        await wait_until(lambda: motion_evidence(leader) == 6, "the other replica's motion outcomes at the leader", 30)
        assert motion_evidence(other) == 0
        await stack.aclose()  # both stop; a third replica then finds the lease free
    async with running(configs[1]) as again:
        await wait_until(lambda: again.leads_loop, "the lease taken over", timeout_s=30)
        assert again.bands is not None
        assert {"gw-on-other", "gw-on-leader"} <= set(again.bands.snapshot()["edges"]), "the pairs stayed in the store"
