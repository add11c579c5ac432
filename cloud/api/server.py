"""Running the admin app with uvicorn inside the service's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 10.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the service owns SIGTERM/SIGINT and stops this server itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield


class AdminServer:
    """The admin API on host:port (0: a free port), served by uvicorn as a task of the running loop."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        """Nothing listens before `start`."""
        self._app = app
        self._host = host
        self._port = port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        """Bind the socket (errors name the address) and serve until `stop`."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            sock = socket.create_server((self._host, self._port), family=family)
        except OSError as err:
            raise OSError(f"admin.host/port: cannot listen on {self._host}:{self._port} ({err.strerror})") from err
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self._app, log_level="warning", lifespan="off", access_log=False)
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="admin-api")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("admin API stopped during start-up")
            if loop.time() > deadline:
                raise TimeoutError(f"admin API did not start within {STARTUP_TIMEOUT_S} s")
            await asyncio.sleep(0.01)
        logger.info("admin API on http://%s:%d", self._host, self.port)

    async def stop(self) -> None:
        """Finish the requests in progress and close the socket."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, STARTUP_TIMEOUT_S)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
