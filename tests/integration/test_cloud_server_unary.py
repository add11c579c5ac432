"""Unary calls, health and limits of the cloud's gRPC server (real server, real client channel)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import policy_pb2, session_pb2, verdict_pb2
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
from tests.helpers.wait import wait_until


async def test_infer_returns_the_verdict_and_a_repeat_is_not_inferred_again(tmp_path: Path, clip: Path) -> None:
    sample = make_sample(clip, busy_frames(clip)[0], "s-unary")
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        first = await stub.Infer(session_pb2.InferRequest(sample=sample, timeout_ms=5_000), timeout=WAIT_S)
        again = await stub.Infer(session_pb2.InferRequest(sample=sample), timeout=WAIT_S)
        assert (first.sample_id, first.edge_id, first.decision) == ("s-unary", EDGE, verdict_pb2.DECISION_CONFIRMED)
        assert first.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND
        assert {d.label for d in first.detections} == {d.label for d in sample.detections}
        assert again == first
        assert counter(service, "edgeglm_inference_request_success_total", backend="oracle") == 1


async def test_infer_refuses_a_broken_image_with_invalid_argument(tmp_path: Path, clip: Path) -> None:
    sample = make_sample(clip, busy_frames(clip)[0], "s-broken", jpeg=b"not a jpeg at all")
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Infer(session_pb2.InferRequest(sample=sample), timeout=WAIT_S)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "s-broken" in (refused.value.details() or "")
        assert counter(service, "edgeglm_cloud_bad_messages_total", reason="bad_image") == 1


async def test_a_backend_slower_than_the_deadline_gives_a_timeout_verdict(tmp_path: Path, clip: Path) -> None:
    config = make_config(tmp_path, clip, backend={"delay_ms": 2_000})
    sample = make_sample(clip, busy_frames(clip)[0], "s-slow")
    async with running(config) as service, channel(service) as stub:
        verdict = await stub.Infer(session_pb2.InferRequest(sample=sample, timeout_ms=100), timeout=WAIT_S)
        assert (verdict.origin, verdict.decision) == (verdict_pb2.VERDICT_ORIGIN_TIMEOUT, verdict_pb2.DECISION_UNSURE)
        assert "s-slow" in verdict.origin_detail
        assert counter(service, "edgeglm_inference_request_failure_total", backend="oracle", reason="timeout") == 1
        # Not a judgement: nothing is stored, and the same sample asked again with time enough is judged.
        assert await service.store.get("s-slow", EDGE) is None
        judged = await stub.Infer(session_pb2.InferRequest(sample=sample, timeout_ms=10_000), timeout=WAIT_S)
        assert (judged.origin, judged.decision) == (verdict_pb2.VERDICT_ORIGIN_BACKEND, verdict_pb2.DECISION_CONFIRMED)
        assert await service.store.get("s-slow", EDGE) is not None


async def next_ack(call: Any) -> session_pb2.Ack:
    """The next Ack on a Session stream (policies and verdicts in between are skipped)."""
    while (message := await read(call)).WhichOneof("kind") != "ack":
        pass
    return message.ack


async def test_a_full_batcher_refuses_before_accepting_resource_exhausted_on_infer_a_deferral_on_a_session(
    tmp_path: Path, clip: Path
) -> None:
    config = make_config(
        tmp_path, clip, backend={"delay_ms": 1_500}, batcher={"max_queue_size": 1, "max_batch_size": 1}
    )
    frames = busy_frames(clip)
    first, second, third = (make_sample(clip, frames[i % len(frames)], f"s-{i}") for i in range(3))
    async with running(config) as service, channel(service) as stub:
        call, _ = await open_session(stub)
        await call.write(session_pb2.EdgeMessage(sample=first))  # taken into the backend
        assert (await next_ack(call)).accepted
        await wait_until(lambda: service.batcher.queue_depth == 0, "the first sample in the backend")
        await call.write(session_pb2.EdgeMessage(sample=second))  # waits in the queue of 1
        assert (await next_ack(call)).accepted
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await stub.Infer(session_pb2.InferRequest(sample=third), timeout=WAIT_S)
        await call.write(session_pb2.EdgeMessage(sample=third))
        deferred = await next_ack(call)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (deferred.sample_id, deferred.accepted) == ("s-2", False)
        assert deferred.code == session_pb2.SESSION_ERROR_CODE_OVERLOADED and deferred.retry_after_ms > 0
        assert counter(service, "edgeglm_cloud_samples_deferred_total", reason="overloaded") == 2
        await call.done_writing()


async def test_infer_from_an_unknown_edge_is_refused(tmp_path: Path, clip: Path) -> None:
    sample = make_sample(clip, busy_frames(clip)[0], "s-stranger", edge_id="gw-stranger")
    async with running(make_config(tmp_path, clip, known_edges=[EDGE])) as service, channel(service) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Infer(session_pb2.InferRequest(sample=sample), timeout=WAIT_S)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await service.store.count() == 0


async def test_get_policy_returns_the_policy_and_nothing_once_the_edge_has_it(tmp_path: Path, clip: Path) -> None:
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        signed = await stub.GetPolicy(session_pb2.GetPolicyRequest(edge_id=EDGE), timeout=WAIT_S)
        version = policy_pb2.Policy.FromString(signed.policy).version
        current = await stub.GetPolicy(
            session_pb2.GetPolicyRequest(edge_id=EDGE, known_version=version), timeout=WAIT_S
        )
        assert signed.signature and signed.key_id
        assert current == policy_pb2.SignedPolicy()
        assert service.policy is not None and version == service.policy.version


async def test_health_is_serving_once_started_and_not_serving_on_stop(tmp_path: Path, clip: Path) -> None:
    async with (
        running(make_config(tmp_path, clip)) as service,
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as chan,
    ):
        health = health_pb2_grpc.HealthStub(chan)
        for name in ("", "edgeglm.v1.EdgeGLM"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=WAIT_S)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        await service.health.shutting_down()
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_an_oversized_message_is_refused_and_the_server_keeps_serving(tmp_path: Path, clip: Path) -> None:
    config = make_config(tmp_path, clip, server={"max_receive_message_bytes": 256 << 10})
    small = make_sample(clip, busy_frames(clip)[0], "s-small")
    huge = make_sample(clip, busy_frames(clip)[0], "s-huge")
    huge.image.jpeg += b"\x00" * (384 << 10)  # above the 256 KiB limit, below gRPC core's 576 KiB
    async with running(config) as service, channel(service) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Infer(session_pb2.InferRequest(sample=huge), timeout=WAIT_S)
        after, _ = await open_session(stub)
        await after.write(session_pb2.EdgeMessage(sample=huge))
        refused = (await read(after)).error  # counted and said; the stream goes on
        await after.write(session_pb2.EdgeMessage(sample=small))
        ack, verdict = (await read(after)).ack, (await read(after)).verdict
        after.cancel()
        assert unary.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "is larger than the 262144 accepted" in refused.message
        assert counter(service, "edgeglm_cloud_bad_messages_total", reason="oversized") == 2
        assert (ack.accepted, verdict.decision) == (True, verdict_pb2.DECISION_CONFIRMED)
        assert await service.store.count() == 1


# An InferRequest whose sample's sample_id is not UTF-8: protobuf refuses to parse it.
UNPARSABLE = bytes([0x0A, 0x04, 0x0A, 0x02, 0xFF, 0xFE])


async def test_bytes_protobuf_cannot_parse_get_invalid_argument_are_counted_and_lose_nothing_else(
    tmp_path: Path, clip: Path
) -> None:
    """Unary: INVALID_ARGUMENT naming the message, not gRPC's INTERNAL; on a Session: an error message,
    and the samples after it are judged as usual."""
    sample = make_sample(clip, busy_frames(clip)[0], "s-after-garbage")
    async with running(make_config(tmp_path, clip)) as service:
        target = f"127.0.0.1:{service.port}"
        async with grpc.aio.insecure_channel(target) as raw:
            infer = raw.unary_unary(
                "/edgeglm.v1.EdgeGLM/Infer",
                request_serializer=lambda data: data,
                response_deserializer=verdict_pb2.Verdict.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await infer(UNPARSABLE, timeout=WAIT_S)
            session = raw.stream_stream(
                "/edgeglm.v1.EdgeGLM/Session",
                request_serializer=lambda data: data,
                response_deserializer=session_pb2.CloudMessage.FromString,
            )
            call = session()  # type: ignore[call-arg]  # written to below, as a stub's call is
            hello = session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id=EDGE))
            await call.write(hello.SerializeToString())
            assert (await read(call)).WhichOneof("kind") == "policy"
            await call.write(bytes([0x12, 0x05, 0x0A, 0x03, 0xC3, 0x28, 0x41]))  # a Sample with a bad sample_id
            await call.write(session_pb2.EdgeMessage(sample=sample).SerializeToString())
            error, ack, verdict = (await read(call)).error, (await read(call)).ack, (await read(call)).verdict
            call.cancel()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "InferRequest of 6 bytes could not be parsed" in (refused.value.details() or "")
    assert error.code == session_pb2.SESSION_ERROR_CODE_INVALID_MESSAGE and "EdgeMessage of 7 bytes" in error.message
    assert (ack.sample_id, ack.accepted, verdict.sample_id) == ("s-after-garbage", True, "s-after-garbage")
    assert counter(service, "edgeglm_cloud_bad_messages_total", reason="undecodable") == 2


async def test_two_edges_using_one_sample_id_each_get_their_own_verdict(tmp_path: Path, clip: Path) -> None:
    """Dedup is per edge: another edge's sample of the same id is judged on its own (it is not lost, and it is
    never handed the first edge's verdict), and each edge's resend gets its own stored verdict."""
    frames = busy_frames(clip)
    owner = make_sample(clip, frames[0], "s-shared", edge_id="gw-1")
    other = make_sample(clip, frames[1], "s-shared", edge_id="gw-2")
    async with running(make_config(tmp_path, clip)) as service, channel(service) as stub:
        first = await stub.Infer(session_pb2.InferRequest(sample=owner), timeout=WAIT_S)
        second = await stub.Infer(session_pb2.InferRequest(sample=other), timeout=WAIT_S)
        first_again = await stub.Infer(session_pb2.InferRequest(sample=owner), timeout=WAIT_S)
        second_again = await stub.Infer(session_pb2.InferRequest(sample=other), timeout=WAIT_S)
        judged = counter(service, "edgeglm_inference_request_success_total", backend="oracle")
        stored = [await service.store.get("s-shared", edge) for edge in ("gw-1", "gw-2")]
        records = [await service.store.get_record("s-shared", edge) for edge in ("gw-1", "gw-2")]
    assert (first.edge_id, second.edge_id) == ("gw-1", "gw-2")
    assert [r.frame_seq for r in records if r] == [owner.frame_seq, other.frame_seq] != [owner.frame_seq] * 2
    assert (first_again, second_again) == (first, second)
    assert judged == 2, "each edge's sample judged once"
    assert [verdict_pb2.Verdict.FromString(blob).edge_id for blob in stored if blob] == ["gw-1", "gw-2"]


async def test_no_more_samples_are_decoded_at_once_than_the_bound(
    tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of large images costs at most max_concurrent_decodes decodes' memory at a time."""
    import threading

    from cloud.ingest.decode import decode_sample as real

    running_now, most = [0], [0]
    lock = threading.Lock()

    def counted(pb: Any) -> Any:
        with lock:
            running_now[0] += 1
            most[0] = max(most[0], running_now[0])
        try:
            return real(pb)
        finally:
            with lock:
                running_now[0] -= 1

    monkeypatch.setattr("cloud.ingest.core.decode_sample", counted)
    frame = busy_frames(clip)[0]
    samples = [make_sample(clip, frame, f"s-burst-{n}") for n in range(12)]
    config = make_config(tmp_path, clip, ingest={"max_concurrent_decodes": 2})
    async with running(config) as service, channel(service) as stub:
        verdicts = await asyncio.gather(
            *(stub.Infer(session_pb2.InferRequest(sample=s), timeout=WAIT_S) for s in samples)
        )
    assert {v.sample_id for v in verdicts} == {s.sample_id for s in samples}
    assert most[0] == 2, f"{most[0]} decodes ran at once"
