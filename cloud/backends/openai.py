"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (vLLM or SGLang serving GLM-4.xV).

Each sample is one request, sent concurrently with the rest of its batch (at most `max_concurrency`
in flight): the image as a `data:image/jpeg;base64,` URL (the JPEG as the edge sent it, when there
is one) and the same prompt as the `glm` backend (`verdict_text`). The answer's first JSON verdict
becomes the result. A timeout, a refused connection, an HTTP error or a body that is not a chat
completion is no judgement: *that* sample gets a SampleFailure naming the endpoint and what happened
(the ingest core defers it and it is judged again later), counted in
`edgeglm_cloud_backend_errors_total{backend="openai",kind}`; the rest of the batch is judged as
usual. 5xx, 429 and connection errors are retried with jittered exponential backoff, all within the
sample's one deadline: the batcher's (passed to `infer`), or `timeout_s` if that comes first.

The API key is never in the YAML: it is read at start from `api_key_file` (e.g. a Kubernetes
secret mounted at /run/secrets/openai-api-key) or from the environment variable `api_key_env`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
from pathlib import Path
from typing import Any, Literal

import cv2
import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from cloud.backends.protocol import BackendStartError
from cloud.backends.verdict_text import DEFAULT_QUESTION, build_prompt, format_prompt, parse_answer, to_result
from cloud.convert import BackendResult, SampleFailure, SampleInput
from cloud.metrics import CloudMetrics

logger = logging.getLogger(__name__)
ErrorKind = Literal["timeout", "connection", "http_5xx", "http_429", "http_4xx", "auth", "malformed", "bad_image"]
_RETRIED: frozenset[ErrorKind] = frozenset({"timeout", "connection", "http_5xx", "http_429"})
_RESERVED_BODY_KEYS = frozenset({"model", "messages"})
_MAX_ERROR_BODY = 200


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
    max_concurrency: int = Field(default=8, ge=1, le=1_024, description="Most requests in flight at once.")
    max_retries: int = Field(
        default=2, ge=0, le=20, description="Retries of a request that met a 5xx, a 429 or a connection error."
    )
    retry_backoff_s: float = Field(
        default=0.25,
        gt=0.0,
        le=60.0,
        description="Wait before the first retry; doubled after each, jittered, never past the deadline.",
    )
    max_tokens: int = Field(default=256, ge=1, le=32_768, description="Most tokens the model may answer with.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    question: str = Field(default=DEFAULT_QUESTION, min_length=1, description="The question asked about each sample.")
    prompt_template: str | None = Field(
        default=None,
        description="User text with {detections}, {reason} and {question} (literal braces doubled); empty: the "
        "default the world GLM was trained on.",
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
        "for vLLM.",
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
            raise ValueError(f"{', '.join(reserved)} are set by the backend (use `model`, not extra_body)")
        return value


class _RequestError(Exception):
    """One failed attempt: what kind, and the text the unsure verdict carries."""

    def __init__(self, kind: ErrorKind, text: str) -> None:
        super().__init__(text)
        self.kind: ErrorKind = kind
        self.text = text


class OpenAIBackend:
    """Judges samples by asking an OpenAI-compatible chat-completions endpoint, one request per sample."""

    name = "openai"

    def __init__(self, config: OpenAIBackendConfig, metrics: CloudMetrics | None = None) -> None:
        """Keep the config; the key is read and the endpoint checked in `start`. `metrics` counts errors."""
        self._config = config
        self._metrics = metrics or CloudMetrics()
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._client: httpx.AsyncClient | None = None
        self._url = f"{config.base_url}/chat/completions"
        self._rng = random.Random()

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

    async def start(self) -> None:
        """Read the API key (a missing file or variable raises), open the client and check the endpoint."""
        if self._client is not None:
            return
        config = self._config
        headers = dict(config.extra_headers)
        key = await asyncio.to_thread(self._read_key)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency
            ),
        )
        try:
            await self._check_endpoint(client, key is not None)
        except BaseException:
            await client.aclose()
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

    async def _check_endpoint(self, client: httpx.AsyncClient, with_key: bool) -> None:
        """GET /models: a refused key stops the start; an endpoint that is away or has no list only logs."""
        config = self._config
        url = f"{config.base_url}/models"
        try:
            response = await client.get(url, timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s))
        except httpx.HTTPError as err:
            logger.warning(
                "openai backend: %s is not reachable yet (%s); samples are unsure until it answers",
                url,
                _describe(err),
            )
            return
        if response.status_code in (401, 403):
            source = _key_source(config) if with_key else "no API key configured (set api_key_file)"
            raise BackendStartError(
                f"openai backend: {url} refused the API key: HTTP {response.status_code} "
                f"{_snippet(response.text)} (key from {source})"
            )
        if response.status_code != 200:
            logger.info("openai backend: %s answered HTTP %d; not checking the model list", url, response.status_code)
            return
        try:
            served = [str(entry["id"]) for entry in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            logger.warning("openai backend: %s did not answer a model list: %s", url, _snippet(response.text))
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
        self, client: httpx.AsyncClient, sample: SampleInput, deadline: float | None
    ) -> BackendResult | SampleFailure:
        try:
            body = await self._request_body(sample)
            async with self._slots:
                text = await self._ask(client, body, deadline)
        except _RequestError as failure:
            self._metrics.backend_errors.labels(self.name, failure.kind).inc()
            if failure.kind == "bad_image":  # this sample's image: asking again would fail again
                return BackendResult("unsure", [], f"openai backend: {failure.text}", 0.0)
            return SampleFailure(failure.kind, f"openai backend: {failure.text}")
        parsed = parse_answer(text)
        if parsed is None:
            self._metrics.backend_unparsable.labels(self.name).inc()
        return to_result(parsed, text, sample)

    async def _request_body(self, sample: SampleInput) -> dict[str, Any]:
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
        body: dict[str, Any] = {
            **config.extra_body,
            "model": config.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        return body

    async def _ask(self, client: httpx.AsyncClient, body: dict[str, Any], by: float | None) -> str:
        """The answer text, retrying what may pass; raises _RequestError when the deadline or the retries run out."""
        config = self._config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.timeout_s if by is None else min(by, loop.time() + config.timeout_s)
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            try:
                return await self._attempt(client, body, remaining)
            except _RequestError as failure:
                last = failure
            if last.kind not in _RETRIED or attempt >= config.max_retries:
                raise _RequestError(last.kind, _attempts(last.text, attempt))
            backoff = config.retry_backoff_s * 2**attempt * self._rng.uniform(0.5, 1.0)
            if loop.time() + backoff >= deadline:
                raise _RequestError(
                    last.kind,
                    _attempts(last.text, attempt) + f"; no time left for a retry within {config.timeout_s:g} s",
                )
            await asyncio.sleep(backoff)
            attempt += 1

    async def _attempt(self, client: httpx.AsyncClient, body: dict[str, Any], remaining: float) -> str:
        """One POST within `remaining` seconds: the answer text, or _RequestError saying what went wrong."""
        url = self._url
        if remaining <= 0:
            raise _RequestError("timeout", f"no answer from {url} within {self._config.timeout_s:g} s")
        timeout = httpx.Timeout(remaining, connect=min(self._config.connect_timeout_s, remaining))
        try:
            response = await client.post(url, json=body, timeout=timeout)
        except httpx.TimeoutException as err:
            raise _RequestError("timeout", f"{url}: {_describe(err)} after {remaining:.3g} s") from err
        except httpx.TransportError as err:
            raise _RequestError("connection", f"{url}: {_describe(err)}") from err
        status = response.status_code
        if status != 200:
            kind = _status_kind(status)
            hint = " (check the API key in backend.api_key_file)" if kind == "auth" else ""
            raise _RequestError(kind, f"{url} answered HTTP {status}{hint}: {_snippet(response.text)}")
        return _answer_text(url, response)

    async def close(self) -> None:
        """Close the HTTP client (requests in flight are cancelled by their callers)."""
        if self._client is not None:
            await self._client.aclose()
        self._client = None


def _answer_text(url: str, response: httpx.Response) -> str:
    """choices[0].message.content of a chat completion; _RequestError("malformed") when the body is not one."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise _RequestError(
            "malformed", f"{url} answered HTTP 200 with no chat completion: {_snippet(response.text)}"
        ) from err
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise _RequestError("malformed", f"{url} answered a message without text content: {_snippet(response.text)}")
    return content


def _status_kind(status: int) -> ErrorKind:
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


def _encode_jpeg(sample: SampleInput, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"sample {sample.sample_id}: image {sample.image.shape} cannot be encoded as JPEG")
    return bytes(encoded)


def _attempts(text: str, retries: int) -> str:
    return text if retries == 0 else f"{text} (after {retries} retries)"


def _describe(err: httpx.HTTPError) -> str:
    detail = str(err) or repr(err.__cause__ or err)
    return f"{type(err).__name__}: {detail}"


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_BODY else text[:_MAX_ERROR_BODY] + "..."


def _key_source(config: OpenAIBackendConfig) -> str:
    if config.api_key_file is not None:
        return f"api_key_file {config.api_key_file}"
    return f"environment variable {config.api_key_env}"
