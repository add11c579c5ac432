"""bench.bare_ack, the gRPC stack's own limit in bench.fleet: a real process that acks and answers each sample."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc.aio

from protos import session_pb2, session_pb2_grpc, verdict_pb2
from sim.fleet.run import start, stop_process, wait_port
from tests.helpers.broker import free_port
from tests.helpers.cloud import make_sample


async def test_the_bare_server_acks_and_answers_each_sample_on_a_session(clip: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "bare.log"
    process = start(["bench.bare_ack", "--port", str(port)], log)
    try:
        await asyncio.to_thread(wait_port, port, time.monotonic() + 30, process, log)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = session_pb2_grpc.EdgeGLMStub(channel)
            call = stub.Session()
            await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id="gw-1")))
            for n in range(3):
                await call.write(session_pb2.EdgeMessage(sample=make_sample(clip, 0, f"s-{n}", "gw-1")))
            answers: list[Any] = [await asyncio.wait_for(call.read(), 10) for _ in range(6)]
            call.cancel()
    finally:
        assert stop_process(process, timeout=10) is not None
    acks = [m.ack.sample_id for m in answers if m.WhichOneof("kind") == "ack"]
    verdicts = [m.verdict for m in answers if m.WhichOneof("kind") == "verdict"]
    assert acks == ["s-0", "s-1", "s-2"] and [v.sample_id for v in verdicts] == acks
    assert all(v.edge_id == "gw-1" and v.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND for v in verdicts)
