"""The world GLM behind the OpenAI-compatible test server: the `glm` backend's own model code, asked through HTTP.

The server receives a prompt text and an image; the `glm` backend asks about *samples*. This adapter
reads the edge's claims and the mined reason back out of the prompt, rebuilds a sample around the
received image, and checks that the glm backend would ask exactly the text the client sent (so the
model sees what it was trained on, and nothing is silently changed); any other prompt gets a 400.
Requests that arrive together share one batched `generate`, the way vLLM batches concurrent
requests, up to `max_batch_size`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from cloud.backends.glm import Generated, GlmBackend, GlmBackendConfig
from cloud.backends.glm_inputs import BadImageError, chat_prefix, image_tokens_for
from cloud.backends.verdict_text import DEFAULT_QUESTION, NO_DETECTIONS, build_prompt
from cloud.convert import CloudDetection, SampleInput
from protos.reasons import MinedReasonName
from sim.openai_server import ChatInput, Reply

logger = logging.getLogger(__name__)
# How long the first request of a batch waits for others to join (they arrive within a few ms).
GATHER_S = 0.005
_MINED_REASONS: tuple[str, ...] = get_args(MinedReasonName)


class PromptError(ValueError):
    """A prompt the world GLM was not trained on; the message says what differs."""


@dataclass
class _Pending:
    sample: SampleInput
    answer: asyncio.Future[Generated | BadImageError]


def sample_from_chat(chat: ChatInput, question: str = DEFAULT_QUESTION) -> SampleInput:
    """A sample whose glm-backend prompt is exactly `chat.text`, around `chat.image`; PromptError otherwise."""
    if chat.image is None:
        raise PromptError("the request has no image; the world GLM judges an image")
    lines = chat.text.split("\n")
    if len(lines) < 2 or not lines[0].startswith("Edge: ") or not lines[1].startswith("Mined: "):
        raise PromptError("the prompt does not start with 'Edge: ...' and 'Mined: ...' lines (verdict_text's default)")
    reason = lines[1].removeprefix("Mined: ")
    if reason not in _MINED_REASONS:
        raise PromptError(f"mined reason {reason!r} is not one of {', '.join(_MINED_REASONS)}")
    height, width = int(chat.image.shape[0]), int(chat.image.shape[1])
    sample = SampleInput(
        sample_id="openai-server",
        edge_id="",
        camera_id="",
        frame_seq=0,
        captured_at=0.0,
        image=chat.image,
        crop=None,
        frame_size=(width, height),
        detections=_claims(lines[0].removeprefix("Edge: "), (0.0, 0.0, float(width), float(height))),
        mined_reason=reason,  # type: ignore[arg-type]  # checked against MinedReasonName above
        priority=0.0,
        trace_id="",
        jpeg=chat.jpeg,
    )
    expected = build_prompt(sample, question)
    if expected != chat.text:
        raise PromptError(f"the world GLM answers only its trained prompt: expected {expected!r}, got {chat.text!r}")
    return sample


def _claims(text: str, box: tuple[float, float, float, float]) -> tuple[CloudDetection, ...]:
    if text == NO_DETECTIONS:
        return ()
    claims = []
    for part in text.split(", "):
        label, _sep, score = part.rpartition(" ")
        try:
            claims.append(CloudDetection(label, 0, float(score), box))
        except ValueError as err:
            raise PromptError(f"edge claim {part!r} is not '<label> <score>'") from err
    return tuple(claims)


class GlmGenerator:
    """Answers chat requests with a GLM-4V model through the glm backend; concurrent requests share a generate."""

    def __init__(self, backend: GlmBackend, tokenizer: Any, image_tokens: int, max_batch_size: int) -> None:
        """Use a started `backend`; `tokenizer` counts tokens for the usage field."""
        self._backend = backend
        self._tokenizer = tokenizer
        self._image_tokens = image_tokens
        self._max_batch_size = max_batch_size
        self._pending: list[_Pending] = []
        self._runner: asyncio.Task[None] | None = None
        self.batch_sizes: Counter[int] = Counter()  # generate calls by how many requests they answered

    @classmethod
    async def load(
        cls, model_path: Path, device: Literal["auto", "cuda", "cpu"] = "auto", max_batch_size: int = 8
    ) -> GlmGenerator:
        """Load the model at `model_path` through the glm backend (BackendStartError names what is missing)."""
        config = GlmBackendConfig(model_path=model_path, device=device, max_batch_size=max_batch_size)
        backend = GlmBackend(config)
        await backend.start()
        tokenizer = await asyncio.to_thread(_tokenizer, model_path)
        return cls(backend, tokenizer, image_tokens_for(config.image_size, 14, 2), max_batch_size)

    @property
    def model_version(self) -> str:
        """The loaded weights' version, as the glm backend reports it."""
        return self._backend.model_version

    async def generate(self, chat: ChatInput) -> Reply:
        """The model's answer to `chat`, or a 400 Reply saying why it cannot be asked."""
        try:
            sample = sample_from_chat(chat)
        except PromptError as err:
            return Reply(status=400, text=str(err))
        pending = _Pending(sample, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="world-glm-batches")
        answer = await pending.answer
        if isinstance(answer, BadImageError):
            return Reply(status=400, text=f"image refused: {answer}")
        prompt = chat_prefix(chat.text, self._image_tokens)
        return Reply(
            text=answer.text,
            prompt_tokens=len(self._tokenizer(prompt)["input_ids"]),
            completion_tokens=len(self._tokenizer(answer.text)["input_ids"]),
            reasoning_tokens=answer.thinking_tokens,
        )

    async def _run(self) -> None:
        """Ask the pending requests, a batch at a time, until none is left."""
        while self._pending:
            await asyncio.sleep(GATHER_S)
            batch = self._pending[: self._max_batch_size]
            del self._pending[: len(batch)]
            self.batch_sizes[len(batch)] += 1
            try:
                answers = await self._backend.ask([p.sample for p in batch])
            except Exception as err:  # every waiting request gets the error (a 500), none is left hanging
                logger.exception("world GLM: generate failed for %d requests", len(batch))
                for pending in batch:
                    if not pending.answer.done():
                        pending.answer.set_exception(err)
                continue
            for pending, answer in zip(batch, answers, strict=True):
                if not pending.answer.done():
                    pending.answer.set_result(answer)

    async def close(self) -> None:
        """Release the model."""
        if self._runner is not None:
            self._runner.cancel()
        await self._backend.close()


def _tokenizer(model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, local_files_only=True)
