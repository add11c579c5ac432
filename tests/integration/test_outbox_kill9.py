"""A process killed with SIGKILL: every sample whose put had returned is in the outbox when it is reopened."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from edge.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000
JPEG_BYTES = 20_000

# Puts `n` samples (0 = without end) with JPEG-sized payloads, printing each id once its put returned,
# then "ready"; then sleeps. It never closes the outbox: the kill is the only way it ends.
CHILD = """
import asyncio, itertools, sys, time
from pathlib import Path
from edge.outbox import Outbox
from protos import sample_pb2

async def main(path, n):
    box = Outbox(Path(path), max_bytes=1 << 30, max_age_s=10**9, metrics=None)
    for i in range(n) if n else itertools.count():
        sample = sample_pb2.Sample(sample_id=f"s-{i:05d}", edge_id="edge-1", priority=(i % 10) / 10)
        sample.captured_at.FromNanoseconds((1_700_000_000 + i) * 10**9)
        sample.image.jpeg = bytes([i % 251]) * 20_000
        await box.put(sample)
        print(sample.sample_id, flush=True)
    print("ready", flush=True)
    time.sleep(600)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def start_child(path: Path, n: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        str(n),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_until(child: asyncio.subprocess.Process, stop: str | int) -> list[str]:
    """Lines the child printed, up to "ready" (a str) or that many ids (an int)."""
    assert child.stdout is not None
    ids: list[str] = []
    while True:
        line = (await asyncio.wait_for(child.stdout.readline(), timeout=60)).decode().strip()
        if not line:
            stderr = await child.stderr.read() if child.stderr else b""
            pytest.fail(f"child ended early: {stderr.decode()}")
        if line == stop:
            return ids
        ids.append(line)
        if stop == len(ids):
            return ids


async def kill_9(child: asyncio.subprocess.Process) -> None:
    child.send_signal(signal.SIGKILL)
    await child.communicate()
    assert child.returncode == -signal.SIGKILL


async def reopen(path: Path) -> tuple[int, int, list[str], bool]:
    """(samples, bytes, ids oldest first, whether every sample is intact) of the outbox at `path`."""
    box = Outbox(path, max_bytes=1 << 30, max_age_s=10**9, metrics=None)
    try:
        stats = await box.stats(now=T0)
        samples = [item.sample() for item in await box.next_batch(stats.samples + 10, "oldest_first", set())]
        intact = all(
            s.image.jpeg == bytes([int(s.sample_id[2:]) % 251]) * JPEG_BYTES
            and s.captured_at.seconds == T0 + int(s.sample_id[2:])
            for s in samples
        )
        assert stats.bytes == sum(s.ByteSize() for s in samples)
        return stats.samples, stats.bytes, [s.sample_id for s in samples], intact
    finally:
        await box.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
async def test_every_sample_put_before_a_kill_9_is_there_after_reopening(tmp_path):
    path, n = tmp_path / "outbox.sqlite", 200
    child = await start_child(path, n)
    try:
        await read_until(child, "ready")
    finally:
        await kill_9(child)

    samples, _, ids, intact = await reopen(path)
    assert samples == n
    assert ids == [f"s-{i:05d}" for i in range(n)]
    assert intact


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
async def test_a_kill_9_in_the_middle_of_puts_loses_none_that_returned_and_leaves_a_usable_file(tmp_path):
    path = tmp_path / "outbox.sqlite"
    child = await start_child(path, 0)  # puts without end: the kill lands during a put
    try:
        returned = await read_until(child, 150)
    finally:
        await kill_9(child)

    _, _, ids, intact = await reopen(path)
    assert set(returned) <= set(ids)
    assert ids == [f"s-{i:05d}" for i in range(len(ids))]  # no gaps: puts commit in order
    assert intact
