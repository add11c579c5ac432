"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (vLLM or SGLang serving GLM-4.xV).

Each sample is one request through the official `openai` async client, sent concurrently with the
rest of its batch (at most `max_concurrency` in flight, one connection pool of that size): the
image as a `data:image/jpeg;base64,` URL (the JPEG as the edge sent it, when there is one) and the
same prompt as the `glm` backend (`verdict_text`).

Structured output: with `structured_output: json_schema` each request asks for the verdict's JSON
schema (`response_format: {type: json_schema}`, from `verdict_text.VerdictAnswer`), which vLLM and
SGLang enforce while decoding. An endpoint that refuses it (a 400/422 naming response_format or
json_schema) is asked again in free text at once, and in free text from then on (the backend
speaks to one endpoint, so it remembers per backend). Every answer is validated with
`VerdictAnswer`; one that asked for the schema and carries no valid verdict is unsure, counted in
`edgeglm_cloud_backend_errors_total{kind="schema_violation"}` and in the unparsable answers. The
reasoning a server returns apart from the text (`reasoning_content`, vLLM and SGLang's
`--reasoning-parser glm45`) is measured, never searched for the verdict.

A timeout, a refused connection, an HTTP error or a body that is not a chat completion is no
judgement: *that* sample gets a SampleFailure naming the endpoint and what happened (the ingest core
defers it and it is judged again later), counted in
`edgeglm_cloud_backend_errors_total{backend="openai",kind}`; the rest of the batch is judged as
usual. The SDK retries 408, 409, 429, 5xx, timeouts and connection errors (`max_retries`), waiting
the server's `Retry-After` when it sends one and its own jittered backoff otherwise; all of it
within the sample's one deadline: the batcher's (passed to `infer`), or `timeout_s` if that comes
first. Every attempt's timeouts are cut to the time left, and a retry wait that would outlast the
deadline ends at it.

The API key is never in the YAML: it is read at start from `api_key_file` (e.g. a Kubernetes
secret mounted at /run/secrets/openai-api-key) or from the environment variable `api_key_env`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import cv2
import httpx
import openai
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from cloud.backends.openai_deadline import (
    CALL,
    Attempt,
    Call,
    DeadlinePassedError,
    DeadlineTransport,
    ErrorKind,
    describe,
    status_kind,
)
from cloud.backends.protocol import BackendStartError
from cloud.backends.verdict_text import (
    DEFAULT_QUESTION,
    ParsedAnswer,
    answer_schema,
    build_prompt,
    format_prompt,
    parse_answer,
    parse_structured,
    to_result,
)
from cloud.convert import BackendResult, SampleFailure, SampleInput
from cloud.metrics import CloudMetrics

logger = logging.getLogger(__name__)
_RESERVED_BODY_KEYS = frozenset({"model", "messages", "response_format"})
_MAX_ERROR_BODY = 200
# Words by which vLLM, SGLang and OpenAI say a 400/422 was about the structured-output request.
_SCHEMA_REFUSAL_WORDS = ("response_format", "json_schema", "guided")
# The client's own timeouts end every attempt by the deadline (they are cut to the time left); this
# guard ends what they cannot, a retry wait that would outlast it. The margin lets a timeout that
# falls due at the deadline be reported as what it was, not as the guard.
_GUARD_MARGIN_S = 0.05
_NO_KEY = "no-key-configured"


class OpenAIBackendConfig(BaseModel):
    """An OpenAI-compatible endpoint serving a vision-language model, and how samples are put to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai"] = Field(default="openai", description="Selects the OpenAI-compatible endpoint backend.")
    base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Endpoint root, up to and including /v1 (e.g. http://vllm:8000/v1).",
    )
    model: str = Field(
        default="zai-org/GLM-4.5V", min_length=1, description="Model name the endpoint serves (its /v1/models id)."
    )
    model_version: str = Field(
        default="", description="Model version written in verdicts (endpoints report none); empty: 'unknown'."
    )
    api_key_file: Path | None = Field(
        default=None, description="File holding the API key (e.g. /run/secrets/openai-api-key); never the key here."
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the API key, when api_key_file is not set. Neither: no key sent.",
    )
    timeout_s: float = Field(
        default=60.0,
        gt=0.0,
        le=3_600.0,
        description="Deadline of one sample's request, retries included, from when it is sent (not while it waits "
        "for a concurrency slot).",
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0.0, le=600.0, description="Longest wait for a connection (within timeout_s)."
    )
    max_concurrency: int = Field(
        default=8, ge=1, le=1_024, description="Most requests in flight at once (and connections in the pool)."
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Retries of a request that met a 408, 409, 429, 5xx, a timeout or a connection error, after "
        "the server's Retry-After or a jittered backoff, within timeout_s.",
    )
    retry_backoff_s: float = Field(
        default=0.25,
        gt=0.0,
        le=60.0,
        description="No longer used (a warning at start says so when set): the openai client waits 0.5 s doubling "
        "to 8 s, jittered, or the server's Retry-After. Kept so that existing configs load.",
    )
    max_tokens: int = Field(
        default=256,
        ge=1,
        le=32_768,
        description="Most tokens the model may answer with, thinking included (raise it when thinking is on).",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    question: str = Field(default=DEFAULT_QUESTION, min_length=1, description="The question asked about each sample.")
    prompt_template: str | None = Field(
        default=None,
        description="User text with {detections}, {reason} and {question} (literal braces doubled); empty: the "
        "default the world GLM was trained on.",
    )
    structured_output: Literal["json_schema", "off"] = Field(
        default="json_schema",
        description="json_schema: ask for the verdict's JSON schema (response_format), in free text once the "
        "endpoint refuses it; off: free text only.",
    )
    max_batch_size: int = Field(default=16, ge=1, le=1_024, description="Most samples per inference call.")
    image_detail: Literal["auto", "low", "high"] = Field(
        default="auto", description="The image_url `detail` hint sent with each image."
    )
    jpeg_quality: int = Field(
        default=90, ge=1, le=100, description="Quality of the JPEG made when a sample arrives without one."
    )
    extra_headers: dict[str, str] = Field(
        default_factory=dict, description="Headers added to every request (not Authorization: use api_key_file)."
    )
    extra_body: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Fields added to every request body, e.g. {chat_template_kwargs: {enable_thinking: false}} "
        "to turn GLM's thinking off on vLLM and SGLang.",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("prompt_template")
    @classmethod
    def _template_formats(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            format_prompt([("cat", 0.5)], "uncertainty_band", "question?", value)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"cannot fill it ({err!r}): use only {{detections}}, {{reason}} and {{question}}, "
                "and write literal braces as {{ and }}"
            ) from err
        return value

    @field_validator("extra_headers")
    @classmethod
    def _no_key_in_headers(cls, value: dict[str, str]) -> dict[str, str]:
        if any(name.lower() in {"authorization", "api-key"} for name in value):
            raise ValueError("no credentials in the YAML: put the key in a file and name it in api_key_file")
        return value

    @field_validator("extra_body")
    @classmethod
    def _no_reserved_body_keys(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        reserved = sorted(_RESERVED_BODY_KEYS & value.keys())
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} are set by the backend (use `model` and `structured_output`, not extra_body)"
            )
        return value


class _RequestError(Exception):
    """One failed request: what kind, the text the failure carries, and whether it refused the schema."""

    def __init__(self, kind: ErrorKind, text: str, schema_refused: bool = False) -> None:
        super().__init__(text)
        self.kind: ErrorKind = kind
        self.text = text
        self.schema_refused = schema_refused


class OpenAIBackend:
    """Judges samples by asking an OpenAI-compatible chat-completions endpoint, one request per sample."""

    name = "openai"

    def __init__(self, config: OpenAIBackendConfig, metrics: CloudMetrics | None = None) -> None:
        """Keep the config; the key is read and the endpoint checked in `start`. `metrics` counts errors."""
        self._config = config
        self._metrics = metrics or CloudMetrics()
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._client: openai.AsyncOpenAI | None = None
        self._url = f"{config.base_url}/chat/completions"
        self._asks_schema = config.structured_output == "json_schema"
        self._omit_key: dict[str, Any] = {}

    @property
    def model_name(self) -> str:
        """The model the endpoint serves."""
        return self._config.model

    @property
    def model_version(self) -> str:
        """The configured model version, or "unknown"."""
        return self._config.model_version or "unknown"

    @property
    def max_batch_size(self) -> int:
        """Most samples per `infer` call."""
        return self._config.max_batch_size

    @property
    def asks_schema(self) -> bool:
        """Whether requests ask for the verdict's JSON schema (false once the endpoint refused it)."""
        return self._asks_schema

    async def start(self) -> None:
        """Read the API key (a missing file or variable raises), open the client and check the endpoint."""
        if self._client is not None:
            return
        config = self._config
        key = await asyncio.to_thread(self._read_key)
        if "retry_backoff_s" in config.model_fields_set:
            logger.warning(
                "openai backend: backend.retry_backoff_s is no longer used (the openai client waits 0.5 s doubling "
                "to 8 s, or the server's Retry-After); remove it from the config"
            )
        limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency)
        http = httpx.AsyncClient(transport=DeadlineTransport(httpx.AsyncHTTPTransport(limits=limits)))
        # The client insists on a key: without one it gets a placeholder that Omit keeps off the wire.
        self._omit_key = {} if key is not None else {"Authorization": openai.Omit()}
        client = openai.AsyncOpenAI(
            api_key=key or _NO_KEY,
            base_url=config.base_url,
            max_retries=config.max_retries,
            timeout=config.timeout_s,
            default_headers=dict(config.extra_headers),
            # openai 1.x and 2.x take an httpx client; 3.x types it as httpx2's but takes httpx's too
            # (openai._httpx2.is_legacy_httpx_async_client), which the transport above is written for.
            http_client=cast(Any, http),
        )
        try:
            await self._check_endpoint(client, key is not None)
        except BaseException:
            await client.close()
            raise
        self._client = client

    def _read_key(self) -> str | None:
        config = self._config
        if config.api_key_file is not None:
            path = config.api_key_file
            try:
                key = path.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise BackendStartError(
                    f"openai backend: api_key_file {path} cannot be read ({err.strerror or err}); mount the secret "
                    "there or fix backend.api_key_file"
                ) from err
            if not key:
                raise BackendStartError(f"openai backend: api_key_file {path} is empty")
            return key
        if config.api_key_env is not None:
            key = os.environ.get(config.api_key_env, "").strip()
            if not key:
                raise BackendStartError(
                    f"openai backend: environment variable {config.api_key_env} (backend.api_key_env) is not set"
                )
            return key
        return None

    async def _check_endpoint(self, client: openai.AsyncOpenAI, with_key: bool) -> None:
        """GET /models once: a refused key stops the start; an endpoint that is away or has no list only logs."""
        config = self._config
        url = f"{config.base_url}/models"
        try:
            page = await client.with_options(max_retries=0).models.list(extra_headers=self._omit_key)
            served = [str(entry.id) for entry in page.data]
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                source = _key_source(config) if with_key else "no API key configured (set api_key_file)"
                raise BackendStartError(
                    f"openai backend: {url} refused the API key: HTTP {err.status_code} "
                    f"{_snippet(err.response.text)} (key from {source})"
                ) from err
            logger.info("openai backend: %s answered HTTP %d; not checking the model list", url, err.status_code)
            return
        except openai.APIConnectionError as err:
            logger.warning(
                "openai backend: %s is not reachable yet (%s); samples are unsure until it answers",
                url,
                describe(err.__cause__ or err),
            )
            return
        except (openai.APIError, AttributeError, TypeError, ValueError) as err:
            logger.warning("openai backend: %s did not answer a model list: %s", url, err)
            return
        if config.model in served:
            logger.info(
                "openai backend: %s serves %s (max %d in flight)", config.base_url, config.model, config.max_concurrency
            )
        else:
            logger.warning(
                "openai backend: %s does not list model %r (it serves %s); requests may fail with 404",
                config.base_url,
                config.model,
                served,
            )

    async def infer(
        self, batch: list[SampleInput], deadline: float | None = None
    ) -> list[BackendResult | SampleFailure]:
        """Ask about every sample concurrently (at most max_concurrency at once); one result per sample.

        Each request ends by `deadline` (the batcher's, for the samples' own deadline) or after
        timeout_s, whichever comes first.
        """
        if self._client is None:
            raise RuntimeError(f"openai backend {self._config.base_url}: infer called before start")
        client = self._client
        return list(await asyncio.gather(*(self._judge(client, sample, deadline) for sample in batch)))

    async def _judge(
        self, client: openai.AsyncOpenAI, sample: SampleInput, by: float | None
    ) -> BackendResult | SampleFailure:
        try:
            messages = await self._messages(sample)
            async with self._slots:
                sent_at = asyncio.get_running_loop().time()
                deadline = sent_at + self._config.timeout_s if by is None else min(by, sent_at + self._config.timeout_s)
                answer = await self._ask(client, messages, deadline, deadline - sent_at)
        except _RequestError as failure:
            self._metrics.backend_errors.labels(self.name, failure.kind).inc()
            if failure.kind == "bad_image":  # this sample's image: asking again would fail again
                return BackendResult("unsure", [], f"openai backend: {failure.text}", 0.0)
            return SampleFailure(failure.kind, f"openai backend: {failure.text}")
        return self._verdict(sample, answer)

    def _verdict(self, sample: SampleInput, answer: _Answer) -> BackendResult:
        """The verdict of one answer, validated; an answer without a valid verdict is unsure and counted."""
        parsed: ParsedAnswer | None
        if answer.structured:
            parsed, why = parse_structured(answer.text, answer.reasoning)
            if parsed is None:  # a server that ignores the schema may still have written a valid verdict
                parsed = parse_answer(answer.text, answer.reasoning)
            if parsed is None:
                self._metrics.backend_errors.labels(self.name, "schema_violation").inc()
        else:
            parsed, why = parse_answer(answer.text, answer.reasoning), ""
        if parsed is None:
            self._metrics.backend_unparsable.labels(self.name).inc()
        result = to_result(parsed, answer.text, sample, why)
        return replace(result, reasoning_tokens=answer.reasoning_tokens, thinking_ms=answer.thinking_ms)

    async def _messages(self, sample: SampleInput) -> list[dict[str, Any]]:
        config = self._config
        try:
            jpeg = sample.jpeg or await asyncio.to_thread(_encode_jpeg, sample, config.jpeg_quality)
        except (ValueError, cv2.error) as err:
            raise _RequestError("bad_image", f"sample {sample.sample_id}: {err}") from err
        image_url = {
            "url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"),
            "detail": config.image_detail,
        }
        content = [
            {"type": "image_url", "image_url": image_url},
            {"type": "text", "text": build_prompt(sample, config.question, config.prompt_template)},
        ]
        return [{"role": "user", "content": content}]

    async def _ask(
        self, client: openai.AsyncOpenAI, messages: list[dict[str, Any]], deadline: float, budget_s: float
    ) -> _Answer:
        """The answer, asking for the schema while the endpoint takes it; once it refuses, in free text.

        `budget_s` is the time from sending to `deadline`, for messages.
        """
        structured = self._asks_schema
        try:
            return await self._complete(client, messages, structured, deadline, budget_s)
        except _RequestError as failure:
            if not (structured and failure.schema_refused):
                raise
            if self._asks_schema:
                self._asks_schema = False
                logger.warning(
                    "openai backend: %s refused response_format json_schema (%s); asking in free text from now on",
                    self._url,
                    failure.text,
                )
        return await self._complete(client, messages, False, deadline, budget_s)

    async def _complete(
        self,
        client: openai.AsyncOpenAI,
        messages: list[dict[str, Any]],
        structured: bool,
        deadline: float,
        budget_s: float,
    ) -> _Answer:
        """One `create` (the client's retries included) that ends by `deadline`; _RequestError says what failed."""
        config = self._config
        args: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
            "extra_headers": self._omit_key,
        }
        if config.extra_body:
            args["extra_body"] = dict(config.extra_body)
        if structured:
            schema = {"name": "edgeglm_verdict", "schema": answer_schema(), "strict": False}
            args["response_format"] = {"type": "json_schema", "json_schema": schema}
        call = Call(deadline, budget_s, config.connect_timeout_s)
        if deadline <= asyncio.get_running_loop().time():
            raise _RequestError("timeout", f"no time left to ask {self._url} (the sample's deadline has passed)")
        token = CALL.set(call)
        try:
            async with asyncio.timeout_at(deadline + _GUARD_MARGIN_S):
                raw = await client.chat.completions.with_raw_response.create(**args)
            answered_ms = call.attempts[-1].elapsed_ms if call.attempts else 0.0  # the attempt that answered
        except (TimeoutError, DeadlinePassedError) as err:
            raise self._out_of_time(call) from err
        except openai.APIStatusError as err:
            raise self._status_failure(err, call, structured) from err
        except openai.APIConnectionError as err:  # APITimeoutError is one
            kind: ErrorKind = "timeout" if isinstance(err, openai.APITimeoutError) else "connection"
            last = call.attempts[-1].outcome if call.attempts else ""
            cause = err.__cause__
            what = last or (describe(cause) if isinstance(cause, httpx.HTTPError) else str(err))
            raise _RequestError(kind, _attempts(f"{self._url}: {what}", call.retries)) from err
        finally:
            CALL.reset(token)
        text, reasoning, reasoning_tokens, completion_tokens = _answer_text(self._url, raw.http_response)
        thinking_ms = answered_ms * reasoning_tokens / completion_tokens if completion_tokens else 0.0
        return _Answer(text, reasoning, structured, reasoning_tokens, thinking_ms)

    def _out_of_time(self, call: Call) -> _RequestError:
        last = call.attempts[-1] if call.attempts else Attempt()
        budget = f"{call.budget_s:.3g} s"
        if last.kind is not None and last.kind != "timeout":  # waiting to retry an error when time ran out
            text = f"{self._url} answered {last.outcome}; no time left for a retry within {budget}"
            return _RequestError(last.kind, _attempts(text, call.retries))
        detail = f" (last attempt: {last.outcome})" if last.outcome else ""
        return _RequestError("timeout", _attempts(f"no answer from {self._url} within {budget}{detail}", call.retries))

    def _status_failure(self, err: openai.APIStatusError, call: Call, structured: bool) -> _RequestError:
        status, body = err.status_code, err.response.text
        kind = status_kind(status)
        hint = " (check the API key in backend.api_key_file)" if kind == "auth" else ""
        refused = structured and status in (400, 422) and any(word in body.lower() for word in _SCHEMA_REFUSAL_WORDS)
        text = _attempts(f"{self._url} answered HTTP {status}{hint}: {_snippet(body)}", call.retries)
        return _RequestError(kind, text, schema_refused=refused)

    async def close(self) -> None:
        """Close the client and its connection pool (requests in flight are cancelled by their callers)."""
        if self._client is not None:
            await self._client.close()
        self._client = None


@dataclass(frozen=True, slots=True)
class _Answer:
    """A chat completion's text, the reasoning the server returned apart from it, and whether the schema was asked."""

    text: str
    reasoning: str
    structured: bool
    reasoning_tokens: int = 0
    thinking_ms: float = 0.0


def _answer_text(url: str, response: httpx.Response) -> tuple[str, str, int, int]:
    """choices[0].message's content and reasoning, and usage's reasoning and completion tokens (0 when not
    reported); _RequestError("malformed") when the body is no chat completion."""
    try:
        body = json.loads(response.text)
        message = body["choices"][0]["message"]
        content = message["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise _RequestError(
            "malformed", f"{url} answered HTTP 200 with no chat completion: {_snippet(response.text)}"
        ) from err
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise _RequestError("malformed", f"{url} answered a message without text content: {_snippet(response.text)}")
    # vLLM and SGLang's reasoning parsers return the thinking apart: reasoning_content (older), reasoning (newer).
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    usage = body.get("usage") if isinstance(body, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("completion_tokens_details")
    thought = details.get("reasoning_tokens") if isinstance(details, dict) else None
    completion = usage.get("completion_tokens")
    thought = thought if isinstance(thought, int) and thought >= 0 else 0
    completion = completion if isinstance(completion, int) and completion >= thought else 0
    return content, reasoning if isinstance(reasoning, str) else "", thought, completion


def _encode_jpeg(sample: SampleInput, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"sample {sample.sample_id}: image {sample.image.shape} cannot be encoded as JPEG")
    return bytes(encoded)


def _attempts(text: str, retries: int) -> str:
    return text if retries == 0 else f"{text} (after {retries} retries)"


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_BODY else text[:_MAX_ERROR_BODY] + "..."


def _key_source(config: OpenAIBackendConfig) -> str:
    if config.api_key_file is not None:
        return f"api_key_file {config.api_key_file}"
    return f"environment variable {config.api_key_env}"
