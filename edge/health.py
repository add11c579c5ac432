"""/healthz, /readyz and /metrics of the edge agent, for K3s probes and Prometheus.

The server runs the standard library's ThreadingHTTPServer in a daemon thread, so a slow scraper
never blocks the agent's event loop; the probes call back into the agent for its answers, which
must therefore be cheap and only read state.

- /healthz (liveness): 200 while `liveness()` says progress is recent, else 503 with the reason.
- /readyz (readiness): 200 when `readiness()` says ready, else 503; the JSON body is
  {"ready": bool, "state": "online"|"autonomous"|"starting"|"draining", "reasons": [...]}.
- /metrics: the agent's registry in the Prometheus text format.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)

Liveness = Callable[[], tuple[bool, str]]
"""Returns (alive, reason)."""
Readiness = Callable[[], tuple[bool, str, Sequence[str]]]
"""Returns (ready, state, reasons)."""
# How often the serving thread checks for stop(): also the longest stop() waits for it.
POLL_INTERVAL_S = 0.1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], health: HealthServer) -> None:
        super().__init__(address, _Handler)
        self.health = health


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        health = self.server.health
        if path == "/healthz":
            self._json(*health.liveness_report())
        elif path == "/readyz":
            self._json(*health.readiness_report())
        elif path == "/metrics":
            self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(health.registry))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path {path!r}; try /healthz, /readyz or /metrics"})

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(body).encode() + b"\n")

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("health %s - %s", self.address_string(), format % args)


class HealthServer:
    """The probe and metrics endpoint; `start()` binds (port 0 picks a free one, see `.port`), `stop()` closes."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Liveness,
        readiness: Readiness,
    ) -> None:
        self.host = host
        self.registry = registry
        self._port = port
        self._liveness = liveness
        self._readiness = readiness
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one picked when configured as 0, once started)."""
        return self._port

    def start(self) -> None:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            return
        self._server = _Server((self.host, self._port), self)
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S}, name="health", daemon=True
        )
        self._thread.start()
        logger.info("health and metrics on http://%s:%d (/healthz, /readyz, /metrics)", self.host, self._port)

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = None
        self._thread = None

    def liveness_report(self) -> tuple[HTTPStatus, dict[str, Any]]:
        """Status and body of /healthz."""
        try:
            alive, reason = self._liveness()
        except Exception as err:  # a probe must answer; the failure is the answer
            logger.exception("liveness check failed")
            alive, reason = False, f"liveness check failed: {err!r}"
        return (HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE), {"alive": alive, "reason": reason}

    def readiness_report(self) -> tuple[HTTPStatus, dict[str, Any]]:
        """Status and body of /readyz."""
        try:
            ready, state, reasons = self._readiness()
        except Exception as err:  # a probe must answer; the failure is the answer
            logger.exception("readiness check failed")
            ready, state, reasons = False, "starting", [f"readiness check failed: {err!r}"]
        body = {"ready": ready, "state": state, "reasons": list(reasons)}
        return (HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE), body
