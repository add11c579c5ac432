"""`edgeglm-cloud serve` as an operator runs it: logs its port, serves, and drains on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.cloud import make_clip
from tests.helpers.wait import wait_until_sync

WAIT_S = 30.0


def wait_for_line(log: Path, pattern: str, process: subprocess.Popen[bytes]) -> re.Match[str]:
    def found() -> re.Match[str] | None:
        assert process.poll() is None, f"serve exited early:\n{log.read_text()}"
        return re.search(pattern, log.read_text())

    return wait_until_sync(found, lambda: f"a line matching {pattern!r}:\n{log.read_text()}", WAIT_S, 0.05)


def test_serve_logs_its_port_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "cam0")
    config = tmp_path / "cloud.yaml"
    config.write_text(
        "server: {host: 127.0.0.1, port: 0}\n"
        f"backend: {{kind: oracle, ground_truth: {{cam0: {clip}}}}}\n"
        "store: {path: state/verdicts.sqlite}\n"
        "admin: {enabled: false}\n"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cloud", "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        port = int(wait_for_line(log, r"listening: gRPC port (\d+)", process).group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT_S)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert code == 0
    assert "cloud service stopped" in log.read_text()
    assert (tmp_path / "state" / "policy-state.json").is_file()
