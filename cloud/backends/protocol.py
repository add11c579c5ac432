"""What every cloud backend is: the protocol the batcher calls, and the error a backend raises at start."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cloud.convert import BackendResult, SampleFailure, SampleInput


class BackendStartError(RuntimeError):
    """A backend cannot start: its model or ground truth is missing or unreadable (the message names the file)."""


@runtime_checkable
class Backend(Protocol):
    """A model that judges batches of samples.

    `start` and `close` are idempotent: whoever owns the backend (the batcher) may call them again.
    `infer` is called with at most `max_batch_size` samples, one call at a time, and returns one
    result per sample in order; raising fails the whole batch (the batcher turns it into
    BackendError for each request). Blocking work (ONNX Runtime, torch, HTTP clients that block)
    runs in an executor, never on the event loop.
    """

    @property
    def name(self) -> str:
        """Backend kind, as written in verdicts: "onnx", "oracle", later "glm", "openai"."""
        ...

    @property
    def model_name(self) -> str:
        """Name of the model behind the backend."""
        ...

    @property
    def model_version(self) -> str:
        """Version of that model (known once started)."""
        ...

    @property
    def max_batch_size(self) -> int:
        """The most samples one `infer` call accepts."""
        ...

    async def start(self) -> None:
        """Load the model (or ground truth); raises BackendStartError naming what is missing."""
        ...

    async def infer(
        self, batch: list[SampleInput], deadline: float | None = None
    ) -> Sequence[BackendResult | SampleFailure]:
        """Judge a batch: one result per sample, in order, by `deadline` (event-loop time; None: no bound).

        A sample the backend could not judge gets a SampleFailure in its place, never a made-up verdict.
        """
        ...

    async def close(self) -> None:
        """Release the model and threads."""
        ...
