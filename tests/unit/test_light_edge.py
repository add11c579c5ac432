"""The lightweight simulated edge against an in-memory Session: resends after a broken stream, counts
duplicates, losses and wrong verdicts; and its prepared crops are judged as it expects by the oracle."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import pytest

from cloud.backends import OracleBackend, OracleBackendConfig
from cloud.convert import sample_from_pb
from protos import session_pb2, verdict_pb2
from sim.fleet.light_config import LightFleetConfig
from sim.fleet.light_edge import FleetTally, LightEdge
from sim.fleet.light_samples import PreparedCrop, TrueObject, build_sample, prepare_clip
from sim.world.clips import ClipSpec, write_clip

WAIT_S = 10.0
PERSON = TrueObject(0, "person", (10, 10, 60, 120))
BUSY = PreparedCrop(3, b"\xff\xd8busy\xff\xd9", (0, 0, 160, 160), (640, 480), (PERSON,), "confirmed", 80)
EMPTY = PreparedCrop(1, b"\xff\xd8empty\xff\xd9", (100, 100, 260, 260), (640, 480), (), "rejected", 80)


class FakeCall:
    """One Session stream of the fake cloud: answers each sample with an ack and a verdict."""

    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        self.samples = 0
        self.broken = False
        self.down: asyncio.Queue[session_pb2.CloudMessage | BaseException | None] = asyncio.Queue()

    async def write(self, message: session_pb2.EdgeMessage) -> None:
        if self.broken:  # as grpc.aio does when writing to a call that has ended
            raise asyncio.InvalidStateError("RPC already finished")
        self.cloud.received.append(message)
        if message.WhichOneof("kind") != "sample":
            return
        self.samples += 1
        if self.samples == self.cloud.break_at:
            self.cloud.break_at = 0  # only the first stream breaks
            self.broken = True
            empty = grpc.aio.Metadata()
            self.down.put_nowait(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, empty, empty, "gone", None))
            return
        sample = message.sample
        self.down.put_nowait(session_pb2.CloudMessage(ack=session_pb2.Ack(sample_id=sample.sample_id, accepted=True)))
        if sample.sample_id in self.cloud.never_answer:
            return
        decision = verdict_pb2.DECISION_CONFIRMED if sample.detections else verdict_pb2.DECISION_REJECTED
        if sample.sample_id in self.cloud.flip:
            decision = verdict_pb2.DECISION_REJECTED
        verdict = verdict_pb2.Verdict(
            sample_id=sample.sample_id, decision=decision, origin=verdict_pb2.VERDICT_ORIGIN_BACKEND
        )
        for _ in range(2 if sample.sample_id in self.cloud.twice else 1):
            self.down.put_nowait(session_pb2.CloudMessage(verdict=verdict))

    async def done_writing(self) -> None:
        self.down.put_nowait(None)

    def cancel(self) -> bool:
        self.down.put_nowait(None)
        return True

    def __aiter__(self) -> FakeCall:
        return self

    async def __anext__(self) -> session_pb2.CloudMessage:
        item = await self.down.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item


class FakeCloud:
    """The stub: every Session call opens a FakeCall; knobs choose what goes wrong."""

    def __init__(self, break_at: int = 0, twice=(), never_answer=(), flip=()) -> None:
        self.break_at = break_at
        self.twice, self.never_answer, self.flip = set(twice), set(never_answer), set(flip)
        self.received: list[session_pb2.EdgeMessage] = []
        self.calls: list[FakeCall] = []

    def Session(self, request_iterator: Any, timeout: float, wait_for_ready: bool) -> FakeCall:  # noqa: N802
        assert request_iterator is None
        assert wait_for_ready
        call = FakeCall(self)
        self.calls.append(call)
        return call

    def sample_ids(self) -> list[str]:
        return [m.sample.sample_id for m in self.received if m.WhichOneof("kind") == "sample"]


def config(**overrides: Any) -> LightFleetConfig:
    settings: dict[str, Any] = {
        "edges": 1,
        "cameras_per_edge": 2,
        "samples_per_edge": 6,
        "rate_per_edge_hz": 1000.0,
        "reconnect_backoff_s": 0.0,
        "verdict_wait_s": 5.0,
    }
    return LightFleetConfig(**(settings | overrides))


async def run_edge(cloud: FakeCloud, settings: LightFleetConfig) -> tuple[LightEdge, FleetTally]:
    tally = FleetTally()
    edge = LightEdge("light-00007", [[BUSY], [EMPTY]], settings, tally)
    now = asyncio.get_running_loop().time()
    await asyncio.wait_for(edge.run(cast(Any, cloud), now, now + WAIT_S), WAIT_S + 5)
    edge.account_end()
    return edge, tally


async def test_a_light_edge_resends_what_was_unanswered_when_its_stream_breaks() -> None:
    cloud = FakeCloud(break_at=3)  # the first stream dies on the third sample, leaving it unanswered

    # 20 samples/s: the edge's reader sees the broken stream before its writer sends the next sample.
    # (Faster, the writer may hit the dead stream first; then more is resent, as a real edge would.)
    _, tally = await run_edge(cloud, config(rate_per_edge_hz=20.0))

    hellos = [m.hello.edge_id for m in cloud.received if m.WhichOneof("kind") == "hello"]
    assert hellos == ["light-00007", "light-00007"]
    ids = cloud.sample_ids()
    assert len(set(ids)) == 6
    assert ids.count("light-00007-000002") == 2  # resent under the same id
    assert len(ids) == 7
    assert (tally.sessions_opened, tally.errors["stream_unavailable"], tally.errors["resent"]) == (2, 1, 1)
    assert (tally.unique_sent, tally.sends, tally.verdicts, tally.lost, tally.duplicates) == (6, 7, 6, 0, 0)
    assert (tally.correct, tally.wrong) == (6, 0)
    assert tally.decisions == {"confirmed": 3, "rejected": 3}  # cameras alternate: busy, empty, busy, ...
    assert len(tally.latencies_ms) == 6


async def test_a_second_verdict_counts_as_duplicate_and_a_missing_one_as_lost() -> None:
    cloud = FakeCloud(twice={"light-00007-000001"}, never_answer={"light-00007-000004"})

    _, tally = await run_edge(cloud, config(verdict_wait_s=0.3))

    assert (tally.verdicts, tally.duplicates, tally.lost) == (5, 1, 1)
    assert tally.lost_examples == ["light-00007-000004"]
    assert tally.unsent == 0
    assert tally.sessions_opened == 1  # waiting for a verdict is not a reason to reconnect


async def test_a_verdict_other_than_the_ground_truth_one_counts_as_wrong() -> None:
    cloud = FakeCloud(flip={"light-00007-000000"})

    _, tally = await run_edge(cloud, config())

    assert (tally.correct, tally.wrong) == (5, 1)
    assert tally.wrong_examples == ["light-00007-000000: expected confirmed, got rejected"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ClipSpec(seed=0, seconds=8, fps=5, quiet_start_seconds=1.0, mean_gap_seconds=1.0)  # 26 busy, 14 empty
    return write_clip(spec, tmp_path_factory.mktemp("light-clip"))


async def test_prepared_crops_are_judged_by_the_oracle_as_the_edge_expects(clip: Path) -> None:
    settings = config(frames_per_clip=30, empty_share=0.3, crop_size=96)
    crops = prepare_clip(clip, settings, random.Random(0))
    oracle = OracleBackend(OracleBackendConfig(ground_truth={"light-00001/cam1": clip}, delay_ms=0, jitter_ms=0))
    await oracle.start()
    rng = random.Random(1)
    samples = [
        sample_from_pb(build_sample(crop, f"s{i}", "light-00001", "cam1", settings.box_noise_px, rng))
        for i, crop in enumerate(crops)
    ]

    results = await oracle.infer(samples)

    assert len(crops) == 30
    assert {c.expected for c in crops} == {"confirmed", "rejected"}
    assert [r.decision for r in results] == [c.expected for c in crops]
    for crop, sample in zip(crops, samples, strict=True):
        x1, y1, x2, y2 = crop.crop
        assert sample.image.shape[:2] == (y2 - y1, x2 - x1)  # the JPEG is the crop, not the frame
        assert x2 - x1 >= 96 and y2 - y1 >= 96


def test_fleet_length_is_a_sample_count_or_a_duration_at_a_rate_not_both() -> None:
    assert LightFleetConfig(duration_s=30, rate_per_edge_hz=0.5).samples_each == 15
    assert LightFleetConfig(samples_per_edge=7).samples_each == 7
    with pytest.raises(ValueError, match="not both"):
        LightFleetConfig(samples_per_edge=7, duration_s=30)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        LightFleetConfig.model_validate({"edge_count": 5})
