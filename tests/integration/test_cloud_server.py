"""The cloud's Session stream end to end: a real grpc.aio server on a free port, the oracle backend
answering from a generated clip's ground truth, and a real grpc.aio client channel.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cloud.service import CloudService
from protos import policy_pb2, session_pb2, status_pb2, verdict_pb2
from tests.helpers.cloud import (
    EDGE,
    WAIT_S,
    busy_frames,
    channel,
    counter,
    make_config,
    make_sample,
    open_session,
    read,
    running,
)


async def test_hello_is_answered_with_a_policy_signed_by_the_configured_key(tmp_path: Path, clip: Path) -> None:
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        call, signed = await open_session(stub)
        public_key = load_pem_public_key((tmp_path / "keys" / "policy-signing.pub").read_bytes())
        assert isinstance(public_key, Ed25519PublicKey)
        public_key.verify(signed.signature, signed.policy)  # raises InvalidSignature if it does not hold
        policy = policy_pb2.Policy.FromString(signed.policy)
        assert (signed.algorithm, policy.scope, policy.version) == ("ed25519", policy_pb2.POLICY_SCOPE_FLEET, 1)
        call.cancel()


async def test_an_edge_with_the_current_policy_is_not_sent_it_again(tmp_path: Path, clip: Path) -> None:
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        call = stub.Session()
        await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id=EDGE, policy_version=1)))
        sample = make_sample(clip, busy_frames(clip)[0], "s-current")
        await call.write(session_pb2.EdgeMessage(sample=sample))
        assert (await read(call)).WhichOneof("kind") == "ack"
        call.cancel()


async def test_every_sample_gets_an_ack_then_its_verdict(tmp_path: Path, clip: Path) -> None:
    frames = busy_frames(clip)[:3]
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        call, _ = await open_session(stub)
        for frame in frames:
            await call.write(session_pb2.EdgeMessage(sample=make_sample(clip, frame, f"s-{frame}")))
        seen: list[tuple[str, str]] = []
        verdicts = {}
        while len(seen) < 2 * len(frames):
            message = await read(call)
            kind = message.WhichOneof("kind") or ""
            item = message.ack if kind == "ack" else message.verdict
            seen.append((kind, item.sample_id))
            if kind == "verdict":
                verdicts[item.sample_id] = message.verdict
        for frame in frames:
            assert seen.index(("ack", f"s-{frame}")) < seen.index(("verdict", f"s-{frame}"))
        assert {v.decision for v in verdicts.values()} == {verdict_pb2.DECISION_CONFIRMED}
        assert {v.origin for v in verdicts.values()} == {verdict_pb2.VERDICT_ORIGIN_BACKEND}
        assert {v.backend for v in verdicts.values()} == {"oracle"}
        assert verdicts[f"s-{frames[0]}"].trace_id == f"trace-s-{frames[0]}"
        assert await service.store.count() == len(frames)
        call.cancel()


async def test_a_resent_sample_gets_its_stored_verdict_and_is_inferred_once(tmp_path: Path, clip: Path) -> None:
    sample = make_sample(clip, busy_frames(clip)[0], "s-dup")
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        call, _ = await open_session(stub)
        await call.write(session_pb2.EdgeMessage(sample=sample))
        first_ack, first_verdict = (await read(call)).ack, (await read(call)).verdict
        await call.write(session_pb2.EdgeMessage(sample=sample))  # same session
        again_ack, again_verdict = (await read(call)).ack, (await read(call)).verdict
        call.cancel()
        other, _ = await open_session(stub)  # after a reconnect
        await other.write(session_pb2.EdgeMessage(sample=sample))
        later_ack, later_verdict = (await read(other)).ack, (await read(other)).verdict
        other.cancel()
        assert (first_ack.accepted, first_ack.duplicate) == (True, False)
        assert (again_ack.accepted, again_ack.duplicate) == (True, True)
        assert (later_ack.accepted, later_ack.duplicate) == (True, True)
        assert first_verdict == again_verdict == later_verdict
        assert counter(service, "edgeglm_inference_request_success_total", backend="oracle") == 1
        assert counter(service, "edgeglm_cloud_samples_duplicate_total") == 2
        assert await service.store.count() == 1


async def test_a_sample_resent_while_judged_waits_for_the_same_judgement(tmp_path: Path, clip: Path) -> None:
    config = make_config(tmp_path, clip, backend={"delay_ms": 300})
    sample = make_sample(clip, busy_frames(clip)[0], "s-race")
    async with running(config) as service, channel(service) as stub:
        call, _ = await open_session(stub)
        await call.write(session_pb2.EdgeMessage(sample=sample))
        await call.write(session_pb2.EdgeMessage(sample=sample))
        messages = [await read(call) for _ in range(4)]
        acks = [m.ack for m in messages if m.WhichOneof("kind") == "ack"]
        verdicts = [m.verdict for m in messages if m.WhichOneof("kind") == "verdict"]
        assert sorted(a.duplicate for a in acks) == [False, True]
        assert len(verdicts) == 2 and verdicts[0] == verdicts[1]
        assert counter(service, "edgeglm_inference_request_success_total", backend="oracle") == 1
        call.cancel()


async def test_a_malformed_image_is_refused_and_the_session_goes_on(tmp_path: Path, clip: Path) -> None:
    frame = busy_frames(clip)[0]
    good = make_sample(clip, frame, "s-good")
    truncated = make_sample(clip, frame, "s-bad", jpeg=good.image.jpeg[: len(good.image.jpeg) // 2])
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        call, _ = await open_session(stub)
        await call.write(session_pb2.EdgeMessage(sample=truncated))
        refused = (await read(call)).ack
        await call.write(session_pb2.EdgeMessage(sample=good))
        ack, verdict = (await read(call)).ack, (await read(call)).verdict
        assert (refused.sample_id, refused.accepted) == ("s-bad", False)
        assert "truncated" in refused.error
        assert (ack.accepted, verdict.sample_id, verdict.decision) == (True, "s-good", verdict_pb2.DECISION_CONFIRMED)
        assert counter(service, "edgeglm_cloud_bad_messages_total", reason="bad_image") == 1
        call.cancel()


async def test_a_session_that_does_not_start_with_hello_is_refused(tmp_path: Path, clip: Path) -> None:
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        call = stub.Session()
        await call.write(session_pb2.EdgeMessage(sample=make_sample(clip, 0, "s-early")))
        error = (await read(call)).error
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(call.read(), WAIT_S)
        assert error.code == session_pb2.SESSION_ERROR_CODE_HELLO_EXPECTED
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert counter(service, "edgeglm_cloud_bad_messages_total", reason="no_hello") == 1
        assert await service.store.count() == 0


async def test_an_unknown_edge_is_refused_when_an_allow_list_is_set(tmp_path: Path, clip: Path) -> None:
    async with running(make_config(tmp_path, clip, known_edges=["gw-known"])) as service, channel(service) as stub:
        call = stub.Session()
        await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id="gw-stranger")))
        error = (await read(call)).error
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(call.read(), WAIT_S)
        known, _ = await open_session(stub, "gw-known")
        known.cancel()
        assert error.code == session_pb2.SESSION_ERROR_CODE_UNKNOWN_EDGE
        assert "gw-stranger" in error.message
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert counter(service, "edgeglm_cloud_bad_messages_total", reason="unknown_edge") == 1


async def test_heartbeats_show_in_the_fleet_status(tmp_path: Path, clip: Path) -> None:
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        call, _ = await open_session(stub)
        status = session_pb2.EdgeMessage(heartbeat=status_pb2.EdgeStatus(edge_id=EDGE, outbox_samples=7))
        await call.write(status)
        await call.write(session_pb2.EdgeMessage(sample=make_sample(clip, busy_frames(clip)[0], "s-hb")))
        await read(call)  # the sample's ack: the heartbeat before it was handled
        record = service.fleet.get(EDGE)
        assert record is not None and record.status is not None
        assert (record.sessions, record.status.outbox_samples) == (1, 7)
        call.cancel()


async def test_stopping_the_service_delivers_owed_verdicts_then_says_shutting_down(tmp_path: Path, clip: Path) -> None:
    config = make_config(tmp_path, clip, backend={"delay_ms": 200})
    async with running(config) as service, channel(service) as stub:
        call, _ = await open_session(stub)
        await call.write(session_pb2.EdgeMessage(sample=make_sample(clip, busy_frames(clip)[0], "s-last")))
        assert (await read(call)).ack.accepted
        stopping = asyncio.create_task(service.stop())
        kinds = [(await read(call)).WhichOneof("kind") for _ in range(2)]
        await asyncio.wait_for(stopping, WAIT_S)
        assert kinds == ["verdict", "error"]
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(call.read(), WAIT_S)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_sample_cut_by_a_shutdown_is_judged_when_resent_after_the_restart(tmp_path: Path, clip: Path) -> None:
    # A grace shorter than the backend's time: the verdict being made is cut, and what the store
    # holds for it is a fallback, not a judgement. The resend after the restart must be judged.
    config = make_config(tmp_path, clip, server={"shutdown_grace_s": 0.1}, backend={"delay_ms": 600})
    sample = make_sample(clip, busy_frames(clip)[0], "s-cut")
    service = CloudService(config)
    await asyncio.wait_for(service.start(), WAIT_S)
    try:
        async with channel(service) as stub:
            call, _ = await open_session(stub)
            await call.write(session_pb2.EdgeMessage(sample=sample))
            assert (await read(call)).ack.accepted
            call.cancel()
    finally:
        await asyncio.wait_for(service.stop(), WAIT_S)
    async with running(make_config(tmp_path, clip)) as again, channel(again) as stub:
        call, _ = await open_session(stub)
        await call.write(session_pb2.EdgeMessage(sample=sample))
        ack, verdict = (await read(call)).ack, (await read(call)).verdict
        call.cancel()
        assert ack.accepted and not ack.duplicate
        assert verdict.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND
        assert verdict.decision == verdict_pb2.DECISION_CONFIRMED
        assert counter(again, "edgeglm_inference_request_success_total", backend="oracle") == 1
        stored = await again.store.get("s-cut", sample.edge_id)
        assert (
            stored is not None and verdict_pb2.Verdict.FromString(stored).origin == verdict_pb2.VERDICT_ORIGIN_BACKEND
        )


async def test_heartbeats_that_are_too_big_or_name_another_edge_or_site_are_refused_and_the_session_goes_on(
    tmp_path: Path, clip: Path
) -> None:
    sample = make_sample(clip, busy_frames(clip)[0], "s-after-heartbeats")
    big = status_pb2.EdgeStatus(edge_id=EDGE, model_name="x" * (20 << 10))
    other_edge = status_pb2.EdgeStatus(edge_id="gw-other")
    other_site = status_pb2.EdgeStatus(edge_id=EDGE, site_id="elsewhere")
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        call = stub.Session()
        await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id=EDGE, site_id="plant-2")))
        assert (await read(call)).WhichOneof("kind") == "policy"
        errors = []
        for status in (big, other_edge, other_site):
            await call.write(session_pb2.EdgeMessage(heartbeat=status))
            errors.append((await read(call)).error.message)
        await call.write(session_pb2.EdgeMessage(sample=sample))
        ack, verdict = (await read(call)).ack, (await read(call)).verdict
        call.cancel()
        record = service.fleet.get(EDGE)
    assert "a heartbeat of 20" in errors[0] and "at most 16384" in errors[0]
    assert "edge 'gw-other'" in errors[1] and "site 'elsewhere'" in errors[2]
    assert ack.accepted and verdict.sample_id == "s-after-heartbeats"
    assert record is not None and record.status is None, "no refused heartbeat was kept"
    assert counter(service, "edgeglm_cloud_bad_messages_total", reason="oversized") == 1
    assert counter(service, "edgeglm_cloud_bad_messages_total", reason="impostor") == 2
