"""The deadline under the openai client: every attempt's timeouts cut to the time its call has left.

The openai client retries inside one `create` and knows no deadline. `DeadlineTransport` sits
under it (in the `httpx.AsyncClient` it is given): each attempt goes through it from the caller's
task, so the call's record (`Call`, set in the `CALL` context variable around the `create`) is found
there. It cuts the attempt's timeouts to the time left, refuses to start one after the deadline,
and notes how each attempt ended, so a failure can say what the last attempt met and how many
retries were made.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import Literal

import httpx

# What went wrong with a request, as counted in edgeglm_cloud_backend_errors_total{backend="openai",kind}.
ErrorKind = Literal[
    "timeout", "connection", "http_5xx", "http_429", "http_4xx", "auth", "malformed", "bad_image", "schema_violation"
]


class DeadlinePassedError(Exception):
    """An attempt was about to start after its call's deadline (not an httpx error: the client must not retry)."""


@dataclass
class Attempt:
    """How one HTTP attempt ended: empty while in flight."""

    outcome: str = ""
    kind: ErrorKind | None = None
    elapsed_ms: float = 0.0  # from sending to the response's headers (a whole answer, when not streamed)


@dataclass
class Call:
    """One `create` call: its deadline (event-loop time), its budget, and every attempt the client made."""

    deadline: float
    budget_s: float
    connect_timeout_s: float
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def retries(self) -> int:
        """Attempts after the first."""
        return max(len(self.attempts) - 1, 0)


CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("edgeglm_openai_call", default=None)


class DeadlineTransport(httpx.AsyncBaseTransport):
    """Cuts every attempt's timeouts to the time its call has left, and notes how each attempt ended.

    Requests outside a call (the start-up model list) pass unchanged.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        """Wrap `inner`, the transport that holds the connection pool."""
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` with timeouts no longer than its call's time left."""
        call = CALL.get()
        if call is None:
            return await self._inner.handle_async_request(request)
        attempt = Attempt()
        call.attempts.append(attempt)
        left = call.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            attempt.outcome, attempt.kind = "not sent: the deadline had passed", "timeout"
            raise DeadlinePassedError(attempt.outcome)
        cut = {"connect": min(call.connect_timeout_s, left), "read": left, "write": left, "pool": left}
        request.extensions = {**request.extensions, "timeout": cut}
        sent = asyncio.get_running_loop().time()
        try:
            response = await self._inner.handle_async_request(request)
            attempt.elapsed_ms = (asyncio.get_running_loop().time() - sent) * 1000
        except httpx.TimeoutException as err:
            attempt.outcome, attempt.kind = f"{type(err).__name__} after {left:.3g} s", "timeout"
            raise
        except httpx.TransportError as err:
            attempt.outcome, attempt.kind = describe(err), "connection"
            raise
        status = response.status_code
        retry_after = response.headers.get("retry-after")
        attempt.outcome = f"HTTP {status}" + (f" with Retry-After {retry_after}" if retry_after else "")
        attempt.kind = None if status < 400 else status_kind(status)
        return response

    async def aclose(self) -> None:
        """Close the pool."""
        await self._inner.aclose()


def status_kind(status: int) -> ErrorKind:
    """The failure kind of an HTTP status."""
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


def describe(err: BaseException) -> str:
    """An exception as `Type: message` for failure texts."""
    detail = str(err) or repr(err.__cause__ or err)
    return f"{type(err).__name__}: {detail}"
