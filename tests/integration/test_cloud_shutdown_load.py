"""SIGTERM under hostile load: the cloud process stops within its grace and keeps what it promised.

While edges stream valid samples, a client writes garbage frames on its Session, another calls
Infer with corrupt JPEGs and a dashboard pages through the verdicts, the process gets SIGTERM. It
must exit 0 within `server.shutdown_grace_s` plus the time to close, leave a store that passes
SQLite's integrity check, and hold every verdict an edge received (the contract: a verdict is
stored before it is sent).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from protos import sample_pb2, session_pb2, session_pb2_grpc, verdict_pb2
from tests.helpers.broker import free_port
from tests.helpers.cloud import make_clip, make_config, make_sample, open_session
from tests.helpers.delivery import CloudProcess
from tests.helpers.wait import wait_until

GRACE_S = 5.0
CLOSE_S = 20.0  # beyond the grace: closing the store, the admin server and the process itself
EDGES = ("gw-a", "gw-b", "gw-c")
# Every load loop is bounded, each to well beyond the time the test needs (tens of seconds).
MOST_SAMPLES = 3000  # per edge, 10 ms apart
MOST_GARBAGE = 20_000  # 5 ms apart
MOST_INFERS = 5000
MOST_PAGES = 5000  # 20 ms apart


@dataclass
class Load:
    """What the clients did and saw."""

    verdicts: dict[str, int] = field(default_factory=dict)  # sample_id -> decision received
    garbage_frames: int = 0
    infers_refused: int = 0
    infers_late: int = 0  # no answer within the client's deadline
    infer_error: str = ""  # a wrong answer to a corrupt Infer, which ends them
    pages: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


async def edge_stream(stub: Any, clip: Path, edge_id: str, load: Load) -> None:
    """Send samples of the clip and collect real verdicts, until the cloud ends the stream."""
    call, _ = await open_session(stub, edge_id)

    async def reader() -> None:
        # read() until EOF: open_session read the policy, and grpc.aio forbids mixing it with `async for`.
        while isinstance(message := await call.read(), session_pb2.CloudMessage):
            if message.WhichOneof("kind") == "verdict":
                verdict = message.verdict
                if verdict.origin == verdict_pb2.VERDICT_ORIGIN_BACKEND:
                    load.verdicts[verdict.sample_id] = verdict.decision

    reading = asyncio.create_task(reader())
    try:
        for number in range(MOST_SAMPLES):
            if reading.done() or load.stop.is_set():
                break
            sample = make_sample(clip, number % 15, f"{edge_id}-{number:04d}", edge_id)
            await call.write(session_pb2.EdgeMessage(sample=sample))
            await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.shield(reading), CLOSE_S + GRACE_S)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
        pass
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def garbage_stream(channel: grpc.aio.Channel, load: Load) -> None:
    """Hello, then random bytes as EdgeMessages on the same Session."""
    call = channel.stream_stream(
        "/edgeglm.v1.EdgeGLM/Session", request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw
    )()  # type: ignore[call-arg]  # requests are written, not iterated
    rng = random.Random(7)
    try:
        hello = session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id="gw-fuzz"))
        await call.write(hello.SerializeToString())
        for _ in range(MOST_GARBAGE):
            if load.stop.is_set():
                break
            await call.write(rng.randbytes(rng.randrange(1, 2048)))
            load.garbage_frames += 1
            await asyncio.sleep(0.005)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
        pass
    finally:
        call.cancel()


async def corrupt_infers(stub: Any, clip: Path, load: Load) -> None:
    """Infer calls whose JPEG is cut short: each must be refused (INVALID_ARGUMENT) until shutdown."""
    good = make_sample(clip, 3, "whole", "gw-infer")
    for number in range(MOST_INFERS):
        if load.stop.is_set():
            break
        sample = sample_pb2.Sample()
        sample.CopyFrom(good)
        sample.sample_id = f"corrupt-{number:04d}"
        sample.image.jpeg = good.image.jpeg[: len(good.image.jpeg) // 3]
        try:
            await stub.Infer(session_pb2.InferRequest(sample=sample), timeout=5)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                load.infers_refused += 1
            elif err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                # No answer yet on a machine busier than the deadline (CPU shared with other jobs): a client
                # asks again; only a wrong answer ends this.
                load.infers_late += 1
            else:
                load.infer_error = f"{err.code().name}: {err.details()}"
                return
        else:
            load.infer_error = f"{sample.sample_id}: a cut-short JPEG was judged instead of refused"
            return


def dashboard_pages(port: int, load: Load) -> None:
    """Page through every verdict, again and again, in a thread (as a browser would)."""
    for _ in range(MOST_PAGES):
        if load.stop.is_set():
            return
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/verdicts?limit=200", timeout=5) as reply:
                json.loads(reply.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return
        load.pages += 1
        load.stop.wait(0.02)


def scrape(port: int) -> str:
    """The service's Prometheus text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


@pytest.mark.slow
async def test_sigterm_under_hostile_load_stops_within_grace_and_keeps_every_verdict_sent(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "cam0")
    admin_port = free_port()
    config = make_config(
        tmp_path,
        clip,
        server={"port": free_port(), "shutdown_grace_s": GRACE_S},
        admin={"enabled": True, "host": "127.0.0.1", "port": admin_port},
    )
    cloud = CloudProcess(config, tmp_path / "cloud")
    await cloud.start()
    try:
        load = Load()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cloud.port}") as channel:
            stub = session_pb2_grpc.EdgeGLMStub(channel)
            tasks = [asyncio.create_task(edge_stream(stub, clip, edge, load)) for edge in EDGES]
            tasks += [
                asyncio.create_task(garbage_stream(channel, load)),
                asyncio.create_task(corrupt_infers(stub, clip, load)),
            ]
            pages = threading.Thread(target=dashboard_pages, args=(admin_port, load), daemon=True)
            pages.start()
            try:
                await wait_until(
                    lambda: (
                        len(load.verdicts) >= 60
                        and load.garbage_frames >= 200
                        and load.infers_refused >= 20
                        and load.pages >= 3
                    ),
                    lambda: (
                        f"load under way: {len(load.verdicts)} verdicts, {load.garbage_frames} garbage frames, "
                        f"{load.infers_refused} refused Infers ({load.infers_late} late, "
                        f"{load.infer_error or 'no wrong answer'}), "
                        f"{load.pages} pages\n{cloud.log()}"
                    ),
                    timeout_s=60,
                )
                metrics = await asyncio.to_thread(scrape, admin_port)
                assert not load.infer_error, load.infer_error
                ended = [task for task in tasks if task.done()]
                stopped = [task.exception() for task in ended]
                assert not ended, f"a client stopped before SIGTERM: {stopped}\n{cloud.log()}"
                process = cloud._process
                assert process is not None
                loop = asyncio.get_running_loop()
                started = loop.time()
                process.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.to_thread(process.wait, GRACE_S + CLOSE_S)
                except subprocess.TimeoutExpired as err:
                    cloud.kill()
                    raise AssertionError(
                        f"SIGTERM under load: still running after {GRACE_S + CLOSE_S} s\n{cloud.log()}"
                    ) from err
                took = loop.time() - started
            finally:
                load.stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.to_thread(pages.join, CLOSE_S)
        assert code == 0, cloud.log()
        refused = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("edgeglm_cloud_bad_messages_total{")
        )
        assert refused >= 1, "the garbage frames were refused and counted"
        assert took <= GRACE_S + CLOSE_S
        log = cloud.log_path.read_text()
        assert "cloud service stopped" in log
        assert "Traceback" not in log, "refusals are one line each, not a traceback"

        store = config.store.path
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            rows = db.execute("SELECT sample_id, verdict FROM verdicts WHERE verdict IS NOT NULL").fetchall()
        stored = {sample_id: verdict_pb2.Verdict.FromString(blob).decision for sample_id, blob in rows}
        missing = {sample_id for sample_id in load.verdicts if sample_id not in stored}
        assert not missing, f"{len(missing)} verdicts were sent but not stored, e.g. {sorted(missing)[:5]}"
        assert all(stored[sample_id] == decision for sample_id, decision in load.verdicts.items())
        assert not any(sample_id.startswith("corrupt-") for sample_id in stored), "a corrupt JPEG got a verdict"
    finally:
        cloud.kill()  # a failed run must not leave the service behind (no-op once it exited)
