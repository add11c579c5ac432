"""The openai backend against a real OpenAI-compatible HTTP server on loopback (sim.openai_server, scripted).

The server's script picks each reply from the edge's label in the prompt, so one batch can mix
answers, failures and delays, and the tests check that a failure stays with its own sample.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cloud.backends import BackendStartError, OpenAIBackend, OpenAIBackendConfig
from cloud.backends.verdict_text import DEFAULT_QUESTION, build_prompt
from cloud.convert import BackendResult, CloudDetection, SampleFailure, SampleInput
from cloud.metrics import CloudMetrics
from sim.openai_server import ChatInput, Generator, Reply, ScriptedGenerator, ServerStats, create_app, serving
from tests.helpers.backends import backend_errors, judgements, unparsable_answers

MODEL = "glm-test"
KEY = "sk-test-0123456789"
CONFIRMED = json.dumps({"decision": "confirmed", "labels": ["cat"], "confidence": 0.91, "description": "a cat"})
REJECTED = json.dumps({"decision": "rejected", "labels": [], "confidence": 0.8, "description": "only grass"})


def make_sample(sample_id: str, label: str | None, *, with_jpeg: bool = True, size: int = 64) -> SampleInput:
    # A smooth picture (JPEG keeps it close) that differs per sample.
    ys, xs = np.mgrid[0:size, 0 : size + 16]
    shade = sum(sample_id.encode()) % 128
    image = np.stack([xs * 2 % 256, ys * 3 % 256, np.full_like(xs, shade)], axis=-1).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() if with_jpeg else b""
    detections = () if label is None else (CloudDetection(label, 0, 0.42, (4.0, 4.0, 40.0, 40.0)),)
    return SampleInput(
        sample_id=sample_id,
        edge_id="edge-1",
        camera_id="cam",
        frame_seq=1,
        captured_at=1_767_225_600.0,
        image=image,
        crop=None,
        frame_size=(size + 16, size),
        detections=detections,
        mined_reason="uncertainty_band",
        priority=0.5,
        trace_id="t",
        jpeg=jpeg,
    )


def by_label(replies: dict[str, Reply | Callable[[], Reply]]) -> Callable[[ChatInput], Reply]:
    """A script choosing the reply from the edge's label named in the prompt ('Edge: <label> 0.42')."""

    def script(chat: ChatInput) -> Reply:
        claim = chat.text.split("\n", 1)[0].removeprefix("Edge: ").split(" ")[0]
        reply = replies[claim]
        return reply() if callable(reply) else reply

    return script


@asynccontextmanager
async def server(generator: Generator, api_key: str | None = None) -> AsyncIterator[tuple[str, ServerStats]]:
    stats = ServerStats()
    async with serving(create_app(generator, MODEL, api_key, stats)) as base_url:
        yield base_url, stats


@asynccontextmanager
async def backend_for(base_url: str, metrics: CloudMetrics, **settings: Any) -> AsyncIterator[OpenAIBackend]:
    config = OpenAIBackendConfig(base_url=base_url, model=MODEL, **{"timeout_s": 5.0, **settings})
    backend = OpenAIBackend(config, metrics)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


class Recorder:
    """A generator that keeps what it was asked and answers CONFIRMED."""

    def __init__(self) -> None:
        self.asked: list[ChatInput] = []

    async def generate(self, chat: ChatInput) -> Reply:
        self.asked.append(chat)
        return Reply(text=CONFIRMED)


async def test_scripted_answers_become_verdicts_and_the_edge_boxes_of_confirmed_labels() -> None:
    script = by_label(
        {
            "cat": Reply(text=f"Sure! ```json\n{CONFIRMED}\n``` hope that helps"),
            "dog": Reply(text=REJECTED),
            "none": Reply(
                text=json.dumps({"decision": "unsure", "labels": [], "confidence": 0.3, "description": "dark"})
            ),
        }
    )
    metrics = CloudMetrics()
    batch = [make_sample("s-cat", "cat"), make_sample("s-dog", "dog"), make_sample("s-motion", None)]
    async with server(ScriptedGenerator(script)) as (url, _stats), backend_for(url, metrics) as backend:
        cat, dog, motion = judgements(await backend.infer(batch))
    assert (cat.decision, cat.text, cat.confidence) == ("confirmed", "a cat", 0.91)
    assert [d.label for d in cat.detections] == ["cat"]
    assert cat.detections[0].box == batch[0].detections[0].box
    assert (dog.decision, dog.detections, dog.confidence) == ("rejected", [], 0.8)
    assert (motion.decision, motion.text) == ("unsure", "dark")
    assert unparsable_answers(metrics) == 0


async def test_the_server_receives_the_edge_jpeg_as_sent_and_the_shared_prompt() -> None:
    recorder = Recorder()
    sent, raw = make_sample("s-jpeg", "cat"), make_sample("s-raw", "cat", with_jpeg=False, size=48)
    async with server(recorder) as (url, _stats), backend_for(url, CloudMetrics()) as backend:
        results = judgements(await backend.infer([sent, raw]))
    assert [r.decision for r in results] == ["confirmed", "confirmed"]
    asked = {chat.jpeg == sent.jpeg: chat for chat in recorder.asked}
    assert set(asked) == {True, False}  # one came as the edge's JPEG, byte for byte; one was encoded here
    assert asked[True].text == build_prompt(sent, DEFAULT_QUESTION)
    assert asked[True].model == MODEL
    encoded = asked[False].image
    assert encoded is not None
    assert encoded.shape == raw.image.shape
    assert float(np.abs(encoded.astype(np.int16) - raw.image).mean()) < 8  # a JPEG of that image, not another


async def test_a_non_json_answer_is_unsure_counted_and_the_rest_of_the_batch_is_judged() -> None:
    script = by_label({"cat": Reply(text=CONFIRMED), "dog": Reply(text="I think it is probably a dog.")})
    metrics = CloudMetrics()
    async with server(ScriptedGenerator(script)) as (url, _stats), backend_for(url, metrics) as backend:
        cat, dog = judgements(await backend.infer([make_sample("s-1", "cat"), make_sample("s-2", "dog")]))
    assert cat.decision == "confirmed"
    assert dog.decision == "unsure"
    assert "probably a dog" in dog.text
    assert unparsable_answers(metrics) == 1


async def test_a_500_is_retried_then_a_failure_not_a_verdict_and_counted_while_the_others_pass() -> None:
    script = by_label({"cat": Reply(text=CONFIRMED), "boom": Reply(status=500)})
    metrics = CloudMetrics()
    async with (
        server(ScriptedGenerator(script)) as (url, stats),
        backend_for(url, metrics, max_retries=2) as backend,
    ):
        cat, boom = await backend.infer([make_sample("s-1", "cat"), make_sample("s-2", "boom")])
    assert isinstance(cat, BackendResult) and cat.decision == "confirmed"
    assert isinstance(boom, SampleFailure)
    assert f"{url}/chat/completions answered HTTP 500" in boom.text
    assert "after 2 retries" in boom.text
    assert stats.by_status == {200: 1, 500: 3}
    assert backend_errors(metrics, "http_5xx") == 1


async def test_a_passing_500_is_retried_into_a_verdict() -> None:
    failures = [Reply(status=503)]
    script = by_label({"cat": lambda: failures.pop() if failures else Reply(text=CONFIRMED)})
    metrics = CloudMetrics()
    async with (
        server(ScriptedGenerator(script)) as (url, stats),
        backend_for(url, metrics, max_retries=1) as backend,
    ):
        (cat,) = judgements(await backend.infer([make_sample("s-1", "cat")]))
    assert cat.decision == "confirmed"
    assert stats.by_status == {503: 1, 200: 1}
    assert backend_errors(metrics, "http_5xx") == 0


async def test_a_timeout_is_a_failure_counted_and_the_next_request_still_works() -> None:
    script = by_label({"cat": Reply(text=CONFIRMED), "slow": Reply(text=CONFIRMED, delay_s=1.5)})
    metrics = CloudMetrics()
    async with (
        server(ScriptedGenerator(script)) as (url, _stats),
        backend_for(url, metrics, timeout_s=0.3, max_retries=3) as backend,
    ):
        slow, cat = await backend.infer([make_sample("s-1", "slow"), make_sample("s-2", "cat")])
        (after,) = judgements(await backend.infer([make_sample("s-3", "cat")]))
    assert isinstance(slow, SampleFailure)
    assert "ReadTimeout" in slow.text
    assert url in slow.text
    assert isinstance(cat, BackendResult)
    assert (cat.decision, after.decision) == ("confirmed", "confirmed")
    assert backend_errors(metrics, "timeout") == 1


async def test_a_refused_connection_is_a_failure_and_counted() -> None:
    with socket.socket() as probe:  # a port nobody listens on any more
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = CloudMetrics()
    async with backend_for(f"http://127.0.0.1:{port}/v1", metrics, max_retries=1) as backend:
        (result,) = await backend.infer([make_sample("s-1", "cat")])
    assert isinstance(result, SampleFailure)
    assert f"127.0.0.1:{port}/v1/chat/completions: ConnectError" in result.text
    assert backend_errors(metrics, "connection") == 1


async def test_a_body_that_is_not_a_chat_completion_is_a_failure_and_counted() -> None:
    script = by_label({"cat": Reply(text=CONFIRMED), "odd": Reply(body='{"result": "confirmed"}')})
    metrics = CloudMetrics()
    async with server(ScriptedGenerator(script)) as (url, _stats), backend_for(url, metrics) as backend:
        cat, odd = await backend.infer([make_sample("s-1", "cat"), make_sample("s-2", "odd")])
    assert isinstance(cat, BackendResult) and cat.decision == "confirmed"
    assert isinstance(odd, SampleFailure)
    assert "no chat completion" in odd.text
    assert '{"result": "confirmed"}' in odd.text
    assert backend_errors(metrics, "malformed") == 1


class Gathering:
    """Holds the first requests until `expected` are in flight (or a bound passes), so the peak is reached for sure."""

    def __init__(self, stats: ServerStats, expected: int) -> None:
        self.stats = stats
        self.expected = expected

    async def generate(self, chat: ChatInput) -> Reply:
        for _ in range(200):  # at most 2 s, and only until the peak was reached once
            if self.stats.max_in_flight >= self.expected:
                break
            await asyncio.sleep(0.01)
        return Reply(text=CONFIRMED)


async def test_no_more_than_max_concurrency_requests_are_in_flight() -> None:
    stats = ServerStats()
    metrics = CloudMetrics()
    gathering = Gathering(stats, expected=3)
    async with (
        serving(create_app(gathering, MODEL, None, stats)) as url,
        backend_for(url, metrics, max_concurrency=3, max_batch_size=10) as backend,
    ):
        results = judgements(await backend.infer([make_sample(f"s-{i}", "cat") for i in range(10)]))
    assert [r.decision for r in results] == ["confirmed"] * 10
    assert stats.requests == 10
    assert stats.max_in_flight == 3


async def test_a_missing_key_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "secrets" / "openai-api-key"
    backend = OpenAIBackend(OpenAIBackendConfig(base_url="http://127.0.0.1:9/v1", api_key_file=missing))
    with pytest.raises(BackendStartError, match=str(missing)):
        await backend.start()


async def test_a_wrong_key_stops_the_start_with_the_status_and_where_the_key_came_from(tmp_path: Path) -> None:
    key_file = tmp_path / "openai-api-key"
    key_file.write_text("sk-wrong\n")
    async with server(ScriptedGenerator(Reply(text=CONFIRMED)), api_key=KEY) as (url, _stats):
        backend = OpenAIBackend(OpenAIBackendConfig(base_url=url, model=MODEL, api_key_file=key_file))
        with pytest.raises(BackendStartError, match="refused the API key: HTTP 401") as refused:
            await backend.start()
        assert str(key_file) in str(refused.value)
        keyless = OpenAIBackend(OpenAIBackendConfig(base_url=url, model=MODEL))
        with pytest.raises(BackendStartError, match="no API key configured"):
            await keyless.start()


async def test_the_right_key_from_a_file_or_the_environment_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "openai-api-key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("EDGEGLM_TEST_OPENAI_KEY", KEY)
    async with server(ScriptedGenerator(Reply(text=CONFIRMED)), api_key=KEY) as (url, stats):
        async with backend_for(url, CloudMetrics(), api_key_file=key_file) as backend:
            (from_file,) = judgements(await backend.infer([make_sample("s-1", "cat")]))
        async with backend_for(url, CloudMetrics(), api_key_env="EDGEGLM_TEST_OPENAI_KEY") as backend:
            (from_env,) = judgements(await backend.infer([make_sample("s-2", "cat")]))
    assert (from_file.decision, from_env.decision) == ("confirmed", "confirmed")
    assert stats.by_status == {200: 2}


async def test_an_endpoint_without_a_model_list_starts_and_its_404s_are_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = CloudMetrics()
    async with server(ScriptedGenerator(Reply(text=CONFIRMED))) as (url, _stats):
        wrong_root = url.removesuffix("/v1") + "/v2"
        with caplog.at_level("INFO", logger="cloud.backends.openai"):
            async with backend_for(wrong_root, metrics) as backend:
                (result,) = await backend.infer([make_sample("s-1", "cat")])
    assert "answered HTTP 404; not checking the model list" in caplog.text
    assert isinstance(result, SampleFailure)
    assert "answered HTTP 404" in result.text
    assert backend_errors(metrics, "http_4xx") == 1


async def test_an_endpoint_that_is_down_at_start_does_not_stop_the_service(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with caplog.at_level("WARNING", logger="cloud.backends.openai"):
        async with backend_for(f"http://127.0.0.1:{port}/v1", CloudMetrics(), max_retries=0) as backend:
            assert backend.model_name == MODEL
    assert "is not reachable yet" in caplog.text


async def test_a_key_refused_after_start_is_a_failure_not_retried_and_says_to_check_the_key() -> None:
    metrics = CloudMetrics()
    async with (
        server(ScriptedGenerator(Reply(status=401))) as (url, stats),
        backend_for(url, metrics, max_retries=3) as backend,
    ):
        (result,) = await backend.infer([make_sample("s-1", "cat")])
    assert isinstance(result, SampleFailure)
    assert "answered HTTP 401 (check the API key in backend.api_key_file)" in result.text
    assert stats.by_status == {401: 1}
    assert backend_errors(metrics, "auth") == 1


async def test_the_servers_reasoning_tokens_and_their_share_of_the_time_reach_the_verdict() -> None:
    thought = Reply(
        text=CONFIRMED, reasoning="the cat sits left", completion_tokens=40, reasoning_tokens=30, delay_s=0.2
    )
    script = by_label({"cat": thought, "dog": Reply(text=REJECTED, completion_tokens=12)})
    metrics = CloudMetrics()
    batch = [make_sample("s-think", "cat"), make_sample("s-plain", "dog")]
    async with server(ScriptedGenerator(script)) as (url, _stats), backend_for(url, metrics) as backend:
        thinking, plain = judgements(await backend.infer(batch))
    assert thinking.reasoning_tokens == 30
    # 30 of 40 tokens: three quarters of an answer that took at least the server's 0.2 s delay
    assert thinking.thinking_ms >= 0.75 * 200
    assert (plain.reasoning_tokens, plain.thinking_ms) == (0, 0.0)  # a server that reports none
