"""A small OpenAI-compatible chat-completions server, for tests and the sim.

`POST /v1/chat/completions` takes the request the `openai` cloud backend sends (one user message with
a `data:` image URL and a text part), decodes the image and the text, and answers with a pluggable
generator: the world GLM (`sim.openai_glm`), or scripted replies that test the backend's failure
handling (a fixed text, a non-JSON text, an HTTP error with headers such as a 429's `Retry-After`, a
body that is not a chat completion, a delay longer than the client's timeout). A server made with
`json_schema=False` refuses `response_format: {type: json_schema}` with a 400 naming the parameter,
as servers without structured output do; otherwise the schema is passed to the generator (which may
ignore it: this server constrains no decoding). `ServerStats` keeps every chat request's arrival
and answer times. `GET /v1/models` lists the one served model. When an API key is configured,
requests without `Authorization: Bearer <key>` get 401, as from OpenAI or vLLM.

    python -m sim.openai_server --model-path sim/models/glm-world --port 0
    python -m sim.openai_server --scripted-answer '{"decision": "rejected", ...}' --port 0

It is not vLLM: requests that arrive together share one generate (up to --max-batch-size) but there is
no continuous batching, and it fetches no remote image URLs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import cv2
import numpy as np
import typer
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.config import error_lines

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
DeviceName = Literal["auto", "cuda", "cpu"]


@dataclass(frozen=True, slots=True)
class ChatInput:
    """What one chat-completions request asks: the user text and the image it carries (BGR, decoded)."""

    model: str
    text: str
    image: NDArray[np.uint8] | None
    jpeg: bytes
    max_tokens: int
    temperature: float
    response_format: dict[str, Any] | None = None  # as sent, e.g. {"type": "json_schema", "json_schema": {...}}
    chat_template_kwargs: dict[str, Any] | None = None  # as sent (vLLM's and SGLang's extension)


@dataclass(frozen=True, slots=True)
class Reply:
    """A generator's answer: the assistant text (or, with an error status, the error message), after a delay.

    `body`, when set, is sent as the response body instead of a chat completion (to test clients
    against malformed responses). `headers` go with the response, e.g. {"Retry-After": "1"} on a 429.
    `reasoning`, when set, is sent as the message's `reasoning_content`, as vLLM's reasoning parsers do;
    `reasoning_tokens` goes in `usage.completion_tokens_details`, as OpenAI reports it.
    """

    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    body: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    reasoning: str | None = None
    reasoning_tokens: int | None = None


class Generator(Protocol):
    """Answers one chat request."""

    async def generate(self, chat: ChatInput) -> Reply:
        """The reply to `chat`."""
        ...


class ScriptedGenerator:
    """Replies chosen by a rule on each request (tests): a fixed Reply, or a function of the ChatInput."""

    def __init__(self, script: Reply | Callable[[ChatInput], Reply]) -> None:
        """`script` is the Reply to every request, or a function choosing it per request."""
        self._script = script

    async def generate(self, chat: ChatInput) -> Reply:
        """The scripted reply for `chat`."""
        return self._script(chat) if callable(self._script) else self._script


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One chat request as the server saw it: when it arrived and was answered (time.monotonic), and how.

    `headers` are the response's, `request_headers` the request's (names in lower case).
    """

    arrived_at: float
    answered_at: float
    status: int
    headers: dict[str, str]
    request_headers: dict[str, str]


@dataclass
class ServerStats:
    """What the server saw: requests by status, the most it held at once, and each request's record in order."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    log: list[RequestRecord] = field(default_factory=list)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one chat request while it is being answered."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1


class _ImageUrl(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str
    detail: str = "auto"


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    image_url: _ImageUrl | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[_Part] | None = None


class ChatRequest(BaseModel):
    """The part of an OpenAI chat-completions request this server reads (other fields are ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class BadRequestError(ValueError):
    """The request cannot be answered; the message says why (sent back as a 400)."""


def decode_data_url(url: str) -> tuple[bytes, NDArray[np.uint8]]:
    """The bytes and decoded BGR image of a `data:image/...;base64,` URL; BadRequestError otherwise."""
    head, sep, payload = url.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64") or not sep:
        raise BadRequestError(f"image_url must be a data:image/...;base64, URL (got {url[:40]!r}); nothing is fetched")
    try:
        raw = base64.b64decode(payload, validate=True)
    except binascii.Error as err:
        raise BadRequestError(f"image_url: invalid base64 ({err})") from err
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadRequestError(f"image_url: {len(raw)} bytes that do not decode as an image")
    return raw, np.asarray(image, dtype=np.uint8)


def chat_input(request: ChatRequest) -> ChatInput:
    """The text and the image of the request's last user message (BadRequestError if it has neither)."""
    users = [m for m in request.messages if m.role == "user"]
    if not users:
        raise BadRequestError("messages: no message with role 'user'")
    content = users[-1].content
    texts: list[str] = []
    jpeg, image = b"", None
    if isinstance(content, str):
        texts.append(content)
    for part in content if isinstance(content, list) else []:
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "image_url" and part.image_url is not None:
            if image is not None:
                raise BadRequestError("messages: this server takes at most one image per request")
            jpeg, image = decode_data_url(part.image_url.url)
    if not texts and image is None:
        raise BadRequestError("messages: the user message has neither text nor an image")
    max_tokens = request.max_completion_tokens or request.max_tokens or 256
    return ChatInput(
        request.model,
        "\n".join(texts),
        image,
        jpeg,
        max_tokens,
        request.temperature,
        request.response_format,
        request.chat_template_kwargs,
    )


def _error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None, param: str | None = None
) -> JSONResponse:
    error: dict[str, Any] = {"message": message, "type": kind, "code": status}
    if param is not None:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def completion_body(model: str, reply: Reply) -> dict[str, Any]:
    """The OpenAI chat-completion response for `reply`."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    usage: dict[str, Any] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    if reply.reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    }


def create_app(
    generator: Generator,
    model_name: str,
    api_key: str | None = None,
    stats: ServerStats | None = None,
    json_schema: bool = True,
) -> FastAPI:
    """The server's FastAPI app: `generator` answers requests for `model_name`; `api_key` guards them.

    `json_schema=False` makes it refuse `response_format` of type json_schema with a 400.
    """
    app = FastAPI(title="EdgeGLM OpenAI-compatible test server", docs_url=None, redoc_url=None)
    seen = stats if stats is not None else ServerStats()
    app.state.stats = seen
    created = int(time.time())

    def authorised(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "invalid or missing API key", "authentication_error")
        entry = {"id": model_name, "object": "model", "created": created, "owned_by": "edgeglm-sim"}
        return JSONResponse({"object": "list", "data": [entry]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrived_at = time.monotonic()
        with seen.track():
            response = await _answer(request)
        seen.by_status[response.status_code] = seen.by_status.get(response.status_code, 0) + 1
        record = RequestRecord(
            arrived_at, time.monotonic(), response.status_code, dict(response.headers), dict(request.headers)
        )
        seen.log.append(record)
        return response

    async def _answer(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "invalid or missing API key", "authentication_error")
        try:
            parsed = ChatRequest.model_validate_json(await request.body())
            chat = chat_input(parsed)
        except ValidationError as err:
            problems = "; ".join(error_lines("not a chat-completions request", err, ChatRequest))
            return _error(400, problems, "invalid_request_error")
        except BadRequestError as err:
            return _error(400, str(err), "invalid_request_error")
        if chat.model != model_name:
            return _error(404, f"model {chat.model!r} is not served here (this server has {model_name!r})", "not_found")
        asked_type = (chat.response_format or {}).get("type")
        if not json_schema and asked_type == "json_schema":
            message = "response_format of type 'json_schema' is not supported by this server"
            return _error(400, message, "invalid_request_error", param="response_format")
        reply = await generator.generate(chat)
        if reply.delay_s > 0:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            kind = "invalid_request_error" if reply.status < 500 else "server_error"
            message = reply.text or f"the generator failed with {reply.status}"
            return _error(reply.status, message, kind, headers=reply.headers)
        if reply.body is not None:
            return Response(reply.body, media_type="application/json", headers=reply.headers)
        return JSONResponse(completion_body(model_name, reply), headers=reply.headers)

    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: whoever embeds the server stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield


@contextlib.asynccontextmanager
async def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` as a task of the running loop; yields the base URL (`http://host:port/v1`)."""
    sock = socket.create_server((host, port))
    server = _EmbeddedServer(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="openai-test-server")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the OpenAI-compatible server stopped during start-up")
            if loop.time() > deadline:
                raise TimeoutError(f"the OpenAI-compatible server did not start within {STARTUP_TIMEOUT_S} s")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sock.close()


def main(
    model_path: Annotated[
        Path | None, typer.Option(help="World GLM folder (or a GLM-4V checkpoint) to answer with.")
    ] = None,
    scripted_answer: Annotated[str | None, typer.Option(help="Answer every request with this text (no model).")] = None,
    model_name: Annotated[
        str, typer.Option(help="Served model name; empty: the model folder's name, or 'scripted'.")
    ] = "",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one (printed).")] = 8000,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File holding the API key clients must send as a Bearer token.")
    ] = None,
    device: Annotated[DeviceName, typer.Option(help="Where the model runs.")] = "auto",
    max_batch_size: Annotated[int, typer.Option(min=1, max=256, help="Most requests per model generate.")] = 8,
    json_schema: Annotated[
        bool, typer.Option(help="Take response_format json_schema requests (--no-json-schema refuses them with 400).")
    ] = True,
) -> None:
    """Serve chat completions until interrupted; prints the base URL once listening."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (model_path is None) == (scripted_answer is None):
        raise typer.BadParameter("give exactly one of --model-path and --scripted-answer")
    api_key = None
    if api_key_file is not None:
        api_key = api_key_file.read_text(encoding="utf-8").strip()
        if not api_key:
            raise typer.BadParameter(f"{api_key_file} is empty", param_hint="--api-key-file")
    name = model_name or (model_path.resolve().name if model_path is not None else "scripted")
    asyncio.run(_serve(model_path, scripted_answer, name, host, port, api_key, device, max_batch_size, json_schema))


async def _serve(
    model_path: Path | None,
    scripted_answer: str | None,
    name: str,
    host: str,
    port: int,
    api_key: str | None,
    device: DeviceName,
    max_batch_size: int,
    json_schema: bool = True,
) -> None:
    closing: Callable[[], Awaitable[None]] | None = None
    generator: Generator
    if model_path is not None:
        from sim.openai_glm import GlmGenerator

        glm = await GlmGenerator.load(model_path, device, max_batch_size)
        generator, closing = glm, glm.close
    else:
        generator = ScriptedGenerator(Reply(text=scripted_answer or ""))
    sock = socket.create_server((host, port))
    config = uvicorn.Config(
        create_app(generator, name, api_key, json_schema=json_schema), log_level="info", lifespan="off"
    )
    print(f"serving {name} on http://{host}:{sock.getsockname()[1]}/v1", flush=True)
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        if closing is not None:
            await closing()


if __name__ == "__main__":
    typer.run(main)
