"""bench.bare_ack, the gRPC stack's own limit in bench.fleet: a real process that acks and answers each sample."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc.aio

from protos import session_pb2, session_pb2_grpc, verdict_pb2
from tests.helpers.broker import free_port
from tests.helpers.cloud import make_sample


async def test_the_bare_server_acks_and_answers_each_sample_on_a_session(clip: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.bare_ack", "--port", str(port))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.returncode is None, "bench.bare_ack did not listen"
                await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = session_pb2_grpc.EdgeGLMStub(channel)
            call = stub.Session()
            await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id="gw-1")))
            for n in range(3):
                await call.write(session_pb2.EdgeMessage(sample=make_sample(clip, 0, f"s-{n}", "gw-1")))
            answers: list[Any] = [await asyncio.wait_for(call.read(), 10) for _ in range(6)]
            call.cancel()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
    acks = [m.ack.sample_id for m in answers if m.WhichOneof("kind") == "ack"]
    verdicts = [m.verdict for m in answers if m.WhichOneof("kind") == "verdict"]
    assert acks == ["s-0", "s-1", "s-2"] and [v.sample_id for v in verdicts] == acks
    assert all(v.edge_id == "gw-1" and v.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND for v in verdicts)
