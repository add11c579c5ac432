"""Starting and watching the programs of a run: the cloud, the broker, the edge agents.

Each program runs as its user would run it: its own process, its own YAML file, the public command
line. In netns mode an edge is started with its link's command prefix (`ip netns exec …`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from sim.fleet.run import free_port, tail, wait_http

__all__ = ["free_port", "metric_values", "start_program", "stop_process", "tail", "wait_http"]


def start_program(args: list[str], log: Path, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m <args>` in its own process (behind `prefix` when given), output to a log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with log.open("wb") as handle:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", *args], stdout=handle, stderr=subprocess.STDOUT, env=env
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """SIGTERM, wait, then SIGKILL if it did not drain in time; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$")


def metric_values(text: str, name: str) -> float:
    """Sum of every sample of the Prometheus metric `name` (all label sets) in an exposition text."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and match.group(1) == name:
            total += float(match.group(3))
    return total
