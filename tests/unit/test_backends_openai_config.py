"""The openai backend's config (no secrets in YAML, templates that fill) and the test server's request reading."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from cloud.backends import BackendConfig, OpenAIBackend, OpenAIBackendConfig, build_backend
from cloud.backends.verdict_text import DEFAULT_QUESTION, build_prompt, format_prompt
from cloud.config import load_config
from cloud.metrics import CloudMetrics
from sim.openai_glm import PromptError, sample_from_chat
from sim.openai_server import (
    BadRequestError,
    ChatInput,
    ChatRequest,
    Reply,
    chat_input,
    completion_body,
    decode_data_url,
)


def test_the_union_selects_the_openai_backend_from_yaml_values() -> None:
    config = TypeAdapter(BackendConfig).validate_python(
        {"kind": "openai", "base_url": "http://vllm:8000/v1/", "model": "zai-org/GLM-4.5V"}
    )
    assert isinstance(config, OpenAIBackendConfig)
    assert config.base_url == "http://vllm:8000/v1"
    backend = build_backend(config, CloudMetrics())
    assert isinstance(backend, OpenAIBackend)
    assert (backend.name, backend.model_name, backend.model_version) == ("openai", "zai-org/GLM-4.5V", "unknown")


@pytest.mark.parametrize("header", ["Authorization", "authorization", "api-key"])
def test_a_key_in_extra_headers_is_refused_pointing_at_api_key_file(header: str) -> None:
    with pytest.raises(ValidationError, match="api_key_file"):
        OpenAIBackendConfig(extra_headers={header: "Bearer sk-secret"})


def test_extra_body_cannot_replace_the_model_or_the_messages() -> None:
    with pytest.raises(ValidationError, match="messages, model are set by the backend"):
        OpenAIBackendConfig(extra_body={"model": "x", "messages": []})
    config = OpenAIBackendConfig(extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert config.extra_body == {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.mark.parametrize("template", ["Edge saw {detections} {unknown}", 'Answer {"decision": ...}', "{0}"])
def test_a_template_that_cannot_be_filled_is_refused(template: str) -> None:
    with pytest.raises(ValidationError, match=r"use only \{detections\}, \{reason\} and \{question\}"):
        OpenAIBackendConfig(prompt_template=template)


def test_a_template_with_doubled_braces_is_kept() -> None:
    template = 'Edge: {detections} ({reason}). {question} Answer like {{"decision": "confirmed"}}.'
    assert OpenAIBackendConfig(prompt_template=template).prompt_template == template
    assert OpenAIBackendConfig(prompt_template="").prompt_template is None


@pytest.mark.parametrize("url", ["vllm:8000/v1", "ftp://vllm/v1", "http:// bad/v1"])
def test_a_base_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="base_url"):
        OpenAIBackendConfig(base_url=url)


def _data_url(image: np.ndarray) -> str:
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def test_the_server_reads_the_image_and_the_text_of_the_last_user_message() -> None:
    image = np.full((20, 30, 3), 200, np.uint8)
    request = ChatRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 64,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _data_url(image), "detail": "low"}},
                        {"type": "text", "text": "Edge: cat 0.40"},
                    ],
                },
            ],
        }
    )
    chat = chat_input(request)
    assert chat.text == "Edge: cat 0.40"
    assert chat.image is not None
    assert chat.image.shape == (20, 30, 3)
    assert (chat.max_tokens, chat.temperature) == (64, 0.0)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://example.com/cat.jpg", "nothing is fetched"),
        ("data:image/jpeg;base64,@@@", "invalid base64"),
        ("data:image/jpeg;base64," + base64.b64encode(b"not an image").decode(), "do not decode as an image"),
    ],
)
def test_the_server_refuses_images_it_cannot_read(url: str, problem: str) -> None:
    with pytest.raises(BadRequestError, match=problem):
        decode_data_url(url)


def test_the_server_refuses_a_request_without_a_user_message() -> None:
    request = ChatRequest.model_validate({"model": "m", "messages": [{"role": "system", "content": "hi"}]})
    with pytest.raises(BadRequestError, match="no message with role 'user'"):
        chat_input(request)


def test_the_response_has_the_openai_chat_completion_shape() -> None:
    body = completion_body("m", Reply(text="hello", prompt_tokens=7, completion_tokens=2))
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "m"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_the_deploy_example_selects_the_openai_backend_with_the_key_from_a_secret_file() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "cloud.openai.example.yaml"
    backend = load_config(example).backend
    assert isinstance(backend, OpenAIBackendConfig)
    assert (backend.base_url, backend.model) == ("http://vllm:8000/v1", "zai-org/GLM-4.5V")
    assert backend.api_key_file == Path("/run/secrets/openai-api-key")
    assert backend.prompt_template is not None
    assert '{"decision": "confirmed" or "rejected"' in backend.prompt_template.format(
        detections="cat 0.50", reason="uncertainty_band", question="?"
    )


@pytest.mark.parametrize(
    "claims", [(), (("cat", 0.62),), (("person", 0.31), ("motorcycle", 0.9))], ids=["motion", "one", "two"]
)
def test_the_world_glm_adapter_rebuilds_the_sample_the_prompt_was_made_from(
    claims: tuple[tuple[str, float], ...],
) -> None:
    image = np.zeros((30, 40, 3), np.uint8)
    prompt = format_prompt(claims, "watch_list", DEFAULT_QUESTION)
    sample = sample_from_chat(ChatInput("m", prompt, image, b"", 64, 0.0))
    assert [(d.label, d.score) for d in sample.detections] == list(claims)
    assert sample.mined_reason == "watch_list"
    assert build_prompt(sample, DEFAULT_QUESTION) == prompt


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ("What is this?", "does not start with 'Edge: ...'"),
        ("Edge: cat 0.50\nMined: gut_feeling\nq", "mined reason 'gut_feeling' is not one of"),
        ("Edge: cat high\nMined: ibt\nq", "edge claim 'cat high' is not '<label> <score>'"),
        ("Edge: cat 0.50\nMined: ibt\nIs it a cat?\nJSON please", "answers only its trained prompt"),
    ],
)
def test_the_world_glm_adapter_refuses_prompts_it_was_not_trained_on(prompt: str, problem: str) -> None:
    with pytest.raises(PromptError, match=problem):
        sample_from_chat(ChatInput("m", prompt, np.zeros((30, 40, 3), np.uint8), b"", 64, 0.0))


def test_extra_body_cannot_ask_for_its_own_response_format_and_structured_output_is_bounded() -> None:
    with pytest.raises(ValidationError, match=r"response_format are set by the backend .*structured_output"):
        OpenAIBackendConfig(extra_body={"response_format": {"type": "json_object"}})
    assert OpenAIBackendConfig().structured_output == "json_schema"
    with pytest.raises(ValidationError, match="structured_output"):
        OpenAIBackendConfig.model_validate({"structured_output": "json_object"})
