"""For delivery tests: a cloud service as its own process (to SIGKILL), and what its store holds.

`CloudProcess` runs `python -m cloud serve` on a fixed port with its config written to a file, so it
can be killed and started again on the same port and the same SQLite store, the way a pod restarts.
`real_verdicts(store_path, edge_id)` reads the store file itself (not through the service) after
the fact: sample_id -> origin of its stored verdict.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import grpc.aio
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.config import CloudConfig
from protos import verdict_pb2

START_TIMEOUT_S = 60.0


class CloudProcess:
    """One cloud service process on `config`'s port; `start`, `kill` (SIGKILL), `stop` (SIGTERM)."""

    def __init__(self, config: CloudConfig, folder: Path) -> None:
        self.config = config
        self.port = config.server.port
        self.config_path = folder / "cloud.yaml"
        self.log_path = folder / "cloud.log"
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start the process and wait until its gRPC health says SERVING."""
        self._process = self._spawn()
        self.starts += 1
        await self._wait_serving()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "cloud", "serve", "--config", str(self.config_path)], stdout=log, stderr=log
            )

    async def _wait_serving(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self._process is not None and self._process.poll() is not None:
                    raise AssertionError(f"cloud exited with {self._process.returncode}:\n{self.log()}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if loop.time() > deadline:
                    raise AssertionError(f"cloud not SERVING after {START_TIMEOUT_S} s:\n{self.log()}")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, whatever it was doing."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self._process is None:
            return 0
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    def log(self) -> str:
        """The process's output so far (the last 4000 characters)."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


def real_verdicts(store_path: Path, edge_id: str) -> dict[str, int]:
    """sample_id -> VerdictOrigin of every verdict stored for `edge_id` (rows without one left out)."""
    with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT sample_id, verdict FROM verdicts WHERE edge_id = ? AND verdict IS NOT NULL", (edge_id,)
        ).fetchall()
    return {sample_id: verdict_pb2.Verdict.FromString(blob).origin for sample_id, blob in rows}


def stored_count(store_path: Path) -> int:
    """Verdicts in the store file now (0 before it exists); safe while the service writes (WAL)."""
    if not store_path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM verdicts WHERE verdict IS NOT NULL").fetchone()
    except sqlite3.OperationalError:  # created but the schema not written yet
        return 0
    return int(count)


def outbox_ids(path: Path) -> set[str]:
    """Sample ids still in an edge's outbox file."""
    if not path.exists():
        return set()
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT sample_id FROM outbox")}
