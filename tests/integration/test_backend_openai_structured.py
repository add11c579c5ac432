"""The openai backend's structured output and its retries, against the scripted OpenAI-compatible server on loopback.

The server (sim.openai_server) records when each request arrived and was answered, so retry waits are
checked on its clock against the Retry-After it sent, not on the test's wall time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import cv2
import numpy as np

from cloud.backends import OpenAIBackend, OpenAIBackendConfig
from cloud.backends.verdict_text import answer_schema
from cloud.convert import BackendResult, CloudDetection, SampleFailure, SampleInput
from cloud.metrics import CloudMetrics
from sim.openai_server import ChatInput, Reply, ServerStats, create_app, serving
from tests.helpers.backends import backend_errors, judgements, unparsable_answers

MODEL = "glm-test"
VERDICT = {"decision": "confirmed", "labels": ["cat"], "confidence": 0.91, "description": "a cat"}
CONFIRMED = json.dumps(VERDICT)


def make_sample(sample_id: str) -> SampleInput:
    ys, xs = np.mgrid[0:48, 0:64]
    image = np.stack([xs * 3 % 256, ys * 5 % 256, np.full_like(xs, 90)], axis=-1).astype(np.uint8)
    return SampleInput(
        sample_id=sample_id,
        edge_id="edge-1",
        camera_id="cam",
        frame_seq=1,
        captured_at=1_767_225_600.0,
        image=image,
        crop=None,
        frame_size=(64, 48),
        detections=(CloudDetection("cat", 0, 0.42, (4.0, 4.0, 40.0, 40.0)),),
        mined_reason="uncertainty_band",
        priority=0.5,
        trace_id="t",
        jpeg=cv2.imencode(".jpg", image)[1].tobytes(),
    )


class Script:
    """Answers each request with the next reply of a list (the last one repeats) and keeps what it was asked."""

    def __init__(self, *replies: Reply | Callable[[ChatInput], Reply]) -> None:
        self.replies = list(replies)
        self.asked: list[ChatInput] = []

    async def generate(self, chat: ChatInput) -> Reply:
        self.asked.append(chat)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return reply(chat) if callable(reply) else reply


@asynccontextmanager
async def backend_behind(
    script: Script, metrics: CloudMetrics, json_schema: bool = True, **settings: Any
) -> AsyncIterator[tuple[OpenAIBackend, ServerStats]]:
    stats = ServerStats()
    async with serving(create_app(script, MODEL, None, stats, json_schema=json_schema)) as url:
        config = OpenAIBackendConfig(base_url=url, model=MODEL, **{"timeout_s": 10.0, **settings})
        backend = OpenAIBackend(config, metrics)
        await backend.start()
        try:
            yield backend, stats
        finally:
            await backend.close()


async def test_a_429_is_retried_after_its_retry_after() -> None:
    # The client's own first backoff is at most 0.5 s: a retry a second or more later is the header's doing.
    script = Script(Reply(status=429, text="slow down", headers={"Retry-After": "1"}), Reply(text=CONFIRMED))
    metrics = CloudMetrics()
    async with backend_behind(script, metrics, max_retries=2) as (backend, stats):
        (result,) = judgements(await backend.infer([make_sample("s-1")]))
    assert result.decision == "confirmed"
    refused, answered = stats.log
    assert (refused.status, refused.headers["retry-after"], answered.status) == (429, "1", 200)
    assert answered.arrived_at - refused.answered_at >= 1.0
    assert backend_errors(metrics, "http_429") == 0


async def test_a_retry_after_past_the_deadline_fails_the_sample_as_a_429_without_another_request() -> None:
    script = Script(Reply(status=429, text="come back later", headers={"Retry-After": "30"}), Reply(text=CONFIRMED))
    metrics = CloudMetrics()
    async with backend_behind(script, metrics, max_retries=3, timeout_s=0.5) as (backend, stats):
        (result,) = await backend.infer([make_sample("s-1")])
    assert isinstance(result, SampleFailure)
    assert result.kind == "http_429"
    assert "answered HTTP 429 with Retry-After 30; no time left for a retry within 0.5 s" in result.text
    assert stats.by_status == {429: 1}
    assert backend_errors(metrics, "http_429") == 1


async def test_requests_ask_for_the_verdict_schema_and_carry_the_chat_template_kwargs() -> None:
    script = Script(Reply(text=CONFIRMED))
    extra = {"chat_template_kwargs": {"enable_thinking": False}}
    async with backend_behind(script, CloudMetrics(), extra_body=extra) as (backend, _stats):
        (result,) = judgements(await backend.infer([make_sample("s-1")]))
    assert result.decision == "confirmed"
    (asked,) = script.asked
    assert asked.response_format is not None
    assert asked.response_format["type"] == "json_schema"
    assert asked.response_format["json_schema"]["schema"] == answer_schema()
    assert asked.chat_template_kwargs == {"enable_thinking": False}


async def test_a_malformed_structured_answer_is_unsure_and_counted() -> None:
    script = Script(
        Reply(text=json.dumps({**VERDICT, "decision": "maybe"})),
        Reply(text=CONFIRMED[:-8]),
        Reply(text=CONFIRMED),
    )
    metrics = CloudMetrics()
    async with backend_behind(script, metrics, max_concurrency=1) as (backend, _stats):
        maybe, truncated, good = judgements(
            await backend.infer([make_sample("s-1"), make_sample("s-2"), make_sample("s-3")])
        )
    assert (maybe.decision, truncated.decision, good.decision) == ("unsure", "unsure", "confirmed")
    assert maybe.text.startswith("unparsable answer:")
    assert "not the verdict schema (decision: " in maybe.text
    assert "not the verdict schema" in truncated.text
    assert (maybe.detections, truncated.detections) == ([], [])
    assert backend_errors(metrics, "schema_violation") == 2
    assert unparsable_answers(metrics) == 2


async def test_thinking_returned_apart_or_in_the_text_is_not_taken_for_the_verdict() -> None:
    decoy = json.dumps({**VERDICT, "decision": "rejected"})
    script = Script(
        Reply(text=CONFIRMED, reasoning=f"at first I thought {decoy}"),  # vLLM's reasoning parser: apart
        Reply(text=f"<think>at first I thought {decoy}</think>{CONFIRMED}"),  # no parser: in the text
    )
    metrics = CloudMetrics()
    async with backend_behind(script, metrics, max_concurrency=1) as (backend, _stats):
        results = judgements(await backend.infer([make_sample("s-1"), make_sample("s-2")]))
    assert [r.decision for r in results] == ["confirmed", "confirmed"]
    assert backend_errors(metrics, "schema_violation") == 0


async def test_a_server_refusing_json_schema_is_asked_in_free_text_from_then_on() -> None:
    script = Script(Reply(text=f"Here it is:\n```json\n{CONFIRMED}\n```"))
    metrics = CloudMetrics()
    async with backend_behind(script, metrics, json_schema=False) as (backend, stats):
        assert backend.asks_schema
        (first,) = judgements(await backend.infer([make_sample("s-1")]))
        assert not backend.asks_schema
        later = judgements(await backend.infer([make_sample("s-2"), make_sample("s-3")]))
    assert [r.decision for r in [first, *later]] == ["confirmed"] * 3
    assert [record.status for record in stats.log] == [400, 200, 200, 200]  # refused once, then never asked
    assert [chat.response_format for chat in script.asked] == [None, None, None]
    assert backend_errors(metrics, "http_4xx") == 0
    assert unparsable_answers(metrics) == 0


async def test_a_400_that_is_not_about_the_schema_is_a_failure_not_a_fallback() -> None:
    script = Script(Reply(status=400, text="the prompt is too long"))
    metrics = CloudMetrics()
    async with backend_behind(script, metrics) as (backend, stats):
        (result,) = await backend.infer([make_sample("s-1")])
    assert isinstance(result, SampleFailure)
    assert "answered HTTP 400: " in result.text and "the prompt is too long" in result.text
    assert backend.asks_schema
    assert stats.by_status == {400: 1}
    assert backend_errors(metrics, "http_4xx") == 1


async def test_with_structured_output_off_no_schema_is_asked() -> None:
    script = Script(Reply(text=CONFIRMED))
    async with backend_behind(script, CloudMetrics(), structured_output="off") as (backend, _stats):
        (result,) = await backend.infer([make_sample("s-1")])
    assert isinstance(result, BackendResult) and result.decision == "confirmed"
    assert script.asked[0].response_format is None


async def test_without_a_key_no_authorization_header_is_sent() -> None:
    script = Script(Reply(text=CONFIRMED))
    async with backend_behind(script, CloudMetrics()) as (backend, stats):
        judgements(await backend.infer([make_sample("s-1")]))
    (record,) = stats.log
    assert record.status == 200
    assert "content-type" in record.request_headers  # the record holds the request's headers
    assert "authorization" not in record.request_headers
