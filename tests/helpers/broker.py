"""A real Mosquitto broker for tests: a free port on loopback, a temporary config and persistence folder.

`running_broker(folder)` starts one and stops it on exit; `broker.restart()` stops it (SIGTERM, so
Mosquitto writes its persistence file) and starts it again on the same port, the way an operator's
restart looks to clients; `broker.kill()` stops it without that. `broker.subscribed(topic)` says
whether the broker's log shows a subscription, the signal a test waits on before publishing to a
client it does not control (mosquitto_sub, a bridge). Tests are skipped with a clear message when
mosquitto is not installed (`make test` installs it).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.fleet.broker import HOST, BrokerTls, mosquitto_binary, mosquitto_config
from sim.fleet.run import free_port as fleet_free_port

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
# mosquitto's `log_type subscribe` line: "<time>: <client id> <qos> <topic filter>".
SUBSCRIPTION = re.compile(r"^\d+: (\S+) \d (\S+)$", re.MULTILINE)


def require_mosquitto() -> str:
    """The mosquitto executable; skips the calling test when it is missing."""
    binary = mosquitto_binary()
    if binary is None and os.environ.get("CI") == "true":
        pytest.fail(
            "mosquitto is not installed on CI: `make test` should have installed it (apt-get install mosquitto)"
        )
    if binary is None:
        pytest.skip("mosquitto is not installed: run `make test` (installs it) or `apt-get install mosquitto`")
    return binary


def free_port() -> int:
    """A TCP port free on loopback right now, never one handed out before in this process."""
    return fleet_free_port()


class MosquittoBroker:
    """One mosquitto process with persistence in `folder`; `start`, `stop`, `restart`, `kill`."""

    def __init__(self, folder: Path, binary: str, port: int | None = None, tls: BrokerTls | None = None) -> None:
        self.folder = folder
        self.binary = binary
        self.host = HOST
        self.port = port or free_port()
        self.log_path = folder / "mosquitto.log"
        self.config_path = folder / "mosquitto.conf"
        self._process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        # Subscriptions logged too: tests wait on them (`subscribed`).
        self.config_path.write_text(
            mosquitto_config(self.port, folder / "data", self.log_path, tls) + "log_type subscribe\n"
        )

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def subscribed(self, topic: str, client_id: str | None = None) -> bool:
        """True once the broker has logged a subscription to `topic` (by `client_id` if given), since its log began."""
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return any(
            found == topic and (client_id is None or client == client_id) for client, found in SUBSCRIPTION.findall(log)
        )

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start mosquitto and wait until it accepts connections (RuntimeError with its log otherwise)."""
        if self.running:
            return
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode} at start:\n{self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not accept on {HOST}:{self.port} within {timeout_s} s:\n{self._log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL if it does not exit in time."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved since the last autosave."""
        self._end(signal.SIGKILL, STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop gracefully and start again on the same port."""
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals, timeout_s: float) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        if process.stderr is not None:
            process.stderr.close()

    def _log_tail(self, lines: int = 30) -> str:
        stderr = b""
        if self._process is not None and self._process.stderr is not None and self._process.poll() is not None:
            stderr = self._process.stderr.read()
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join([*log.splitlines()[-lines:], stderr.decode(errors="replace")]).strip()


@contextlib.contextmanager
def running_broker(folder: Path, tls: BrokerTls | None = None) -> Iterator[MosquittoBroker]:
    """A started broker in `folder` (skips the test when mosquitto is missing), stopped on exit."""
    broker = MosquittoBroker(folder, require_mosquitto(), tls=tls)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
