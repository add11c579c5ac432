"""The closed loop end to end: a real cloud service (oracle backend, SQLite store) and a real gRPC Session.

An edge with the fleet band [0.25, 0.6] and a 25 % random audit sends what its miner would: every
object scored inside the band (uncertainty_band) and every fourth of the others (random_audit). True
objects carry the true box of the clip's motorcycle (the oracle confirms them), false ones a box
where nothing is (the oracle rejects them). Their edge scores are spread evenly over U(0.4, 1.0) for
true and U(0.0, 0.6) for false objects, so for targets 0.95 the band the cloud should push is
[0.43, 0.578] (see tests/unit/test_policy_bands.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from protos import policy_pb2, sample_pb2, session_pb2
from tests.helpers.cloud import (
    EDGE,
    WAIT_S,
    busy_frames,
    channel,
    make_config,
    make_sample,
    open_session,
    running,
    truth,
)
from tests.helpers.wait import wait_until

RIGHT_LOW, RIGHT_HIGH = 0.43, 0.52 / 0.9
PER_CLASS = 200
NOWHERE = sample_pb2.Box(x1=500, y1=40, x2=560, y2=100)  # no object of the clip is there


def edge_samples(clip: Path) -> list[Any]:
    """What the edge's miner sends of 200 true and 200 false objects, one object per sample."""
    frame = busy_frames(clip)[0]
    (thing,) = truth(clip)[frame]
    objects = [(0.4 + 0.6 * (i + 0.5) / PER_CLASS, True) for i in range(PER_CLASS)]
    objects += [(0.6 * (i + 0.5) / PER_CLASS, False) for i in range(PER_CLASS)]
    samples = []
    outside = 0
    for number, (score, real) in enumerate(objects):
        if 0.25 <= score <= 0.6:
            reason = sample_pb2.MINED_REASON_UNCERTAINTY_BAND
        else:
            outside += 1
            if outside % 4:
                continue
            reason = sample_pb2.MINED_REASON_RANDOM_AUDIT
        sample = make_sample(clip, frame, f"s-{number}")
        del sample.detections[:]
        box = sample_pb2.Box(x1=thing["box"][0], y1=thing["box"][1], x2=thing["box"][2], y2=thing["box"][3])
        sample.detections.append(
            sample_pb2.Detection(
                class_id=thing["class_id"], label=thing["label"], score=score, box=box if real else NOWHERE
            )
        )
        sample.mined_reason = reason
        samples.append(sample)
    return samples


def loop_config(tmp_path: Path, clip: Path, pairs: int) -> Any:
    """The oracle service with the closed loop on, evaluating once all `pairs` arrived."""
    return make_config(
        tmp_path,
        clip,
        policy={
            "fleet": {"mining": {"random_audit_rate": 0.25}},
            "closed_loop": {
                "enabled": True,
                "min_pairs": pairs,
                "evaluate_every_pairs": pairs,
                "min_audit_pairs": 10,
                "min_interval_s": 0,
            },
        },
    )


async def collect(call: Any, into: list[session_pb2.CloudMessage]) -> None:
    """Read a Session until it ends."""
    while True:
        message = await call.read()
        if not isinstance(message, session_pb2.CloudMessage):
            return
        into.append(message)


def band(policy: policy_pb2.Policy, label: str) -> tuple[float, float]:
    found = [b for b in policy.mining.uncertainty_bands if b.label == label]
    chosen = found[0] if found else policy.mining.default_uncertainty_band
    return chosen.low, chosen.high


async def test_the_cloud_pushes_the_edge_a_band_that_keeps_recall_and_keeps_it_across_a_restart(
    tmp_path: Path, clip: Path
) -> None:
    samples = edge_samples(clip)
    label = samples[0].detections[0].label
    config = loop_config(tmp_path, clip, len(samples))
    async with running(config) as service, channel(service) as stub:
        call, first = await open_session(stub)
        assert band(policy_pb2.Policy.FromString(first.policy), label) == pytest.approx((0.25, 0.6))
        messages: list[session_pb2.CloudMessage] = []
        reader = asyncio.create_task(collect(call, messages))
        for sample in samples:
            await call.write(session_pb2.EdgeMessage(sample=sample))

        def pushed() -> list[policy_pb2.Policy]:
            return [policy_pb2.Policy.FromString(m.policy.policy) for m in messages if m.WhichOneof("kind") == "policy"]

        await wait_until(
            lambda: sum(m.WhichOneof("kind") == "verdict" for m in messages) == len(samples), "verdicts", WAIT_S
        )
        await wait_until(lambda: bool(pushed()), "a policy push", WAIT_S)
        call.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        (moved,) = pushed()
        assert (moved.scope, moved.scope_id) == (policy_pb2.POLICY_SCOPE_EDGE, EDGE)
        assert moved.version > policy_pb2.Policy.FromString(first.policy).version
        low, high = band(moved, label)
        assert low == pytest.approx(RIGHT_LOW, abs=0.01)
        assert high == pytest.approx(RIGHT_HIGH, abs=0.01)
        assert service.bands is not None
        shown = service.bands.snapshot()["edges"][EDGE][label]
        assert shown["pairs"] == len(samples)
        assert shown["recall"] is not None and shown["recall"] >= 0.95
        assert shown["last_evaluation"]["band"] == {"low": 0.25, "high": 0.6}  # what the edge had
        assert shown["upload"] < 0.6 * shown["last_evaluation"]["upload"]
        assert [h["version"] for h in shown["history"]] == [moved.version]
    with sqlite3.connect(config.store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM score_pairs").fetchone()[0] == len(samples)
    async with running(config) as service, channel(service) as stub:
        assert service.bands is not None
        again = service.bands.snapshot()["edges"][EDGE][label]
        assert (again["pairs"], again["audit_pairs"]) == (shown["pairs"], shown["audit_pairs"])
        call, signed = await open_session(stub)
        restored = policy_pb2.Policy.FromString(signed.policy)
        assert band(restored, label) == pytest.approx((low, high))
        assert restored.version > moved.version
        call.cancel()
