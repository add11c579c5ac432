"""A checkpoint folder with a chat template is asked through it: a tiny random Glm4v saved with its own template."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cloud.backends import BackendStartError, GlmBackend, GlmBackendConfig
from cloud.backends.glm_inputs import IMAGE_TOKEN, chat_prefix, chat_text
from cloud.backends.verdict_text import DEFAULT_QUESTION, build_prompt
from cloud.convert import CloudDetection, SampleInput
from cloud.metrics import CloudMetrics
from tests.helpers.backends import judgements
from tests.helpers.glm_models import save_random_glm

# GLM-4.1V's chat shape, with a marker of its own after the assistant tag so its use can be seen.
TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message.role }}|>\n"
    "{% for part in message.content %}{% if part.type == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% else %}{{ part.text }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think></think>{% endif %}Answer:{% endif %}"
)


@pytest.fixture(scope="module")
def templated_glm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_random_glm(tmp_path_factory.mktemp("templated-glm"))
    (folder / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    return folder


def grey_sample(sample_id: str) -> SampleInput:
    return SampleInput(
        sample_id=sample_id,
        edge_id="edge-1",
        camera_id="cam",
        frame_seq=1,
        captured_at=0.0,
        image=np.full((56, 84, 3), 127, np.uint8),
        crop=None,
        frame_size=(84, 56),
        detections=(CloudDetection("cat", 0, 0.5, (0.0, 0.0, 84.0, 56.0)),),
        mined_reason="uncertainty_band",
        priority=0.5,
        trace_id="",
    )


def test_the_template_builds_the_chat_with_one_image_token_per_merged_patch(templated_glm: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(templated_glm, local_files_only=True)
    prompt = build_prompt(grey_sample("s-1"), DEFAULT_QUESTION)
    text = chat_text(tokenizer, prompt, 16)
    image = "<|begin_of_image|>" + IMAGE_TOKEN * 16 + "<|end_of_image|>"
    assert text == f"[gMASK]<sop><|user|>\n{image}{prompt}<|assistant|>\nAnswer:"
    thinking_off = chat_text(tokenizer, prompt, 16, {"enable_thinking": False})
    assert thinking_off.endswith("<|assistant|>\n<think></think>Answer:")


def test_a_folder_without_a_template_keeps_the_built_in_chat(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(save_random_glm(tmp_path), local_files_only=True)
    assert chat_text(tokenizer, "Edge: none", 4) == chat_prefix("Edge: none", 4)


async def test_the_backend_asks_through_the_checkpoints_template(
    templated_glm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = CloudMetrics()
    backend = GlmBackend(GlmBackendConfig(model_path=templated_glm, device="cpu", max_new_tokens=8), metrics)
    with caplog.at_level(logging.INFO, logger="cloud.backends.glm"):
        await backend.start()
    try:
        assert backend.uses_chat_template is True
        # Two images in one generate: the model raises unless each chat holds as many image tokens as features.
        results = judgements(await backend.infer([grey_sample("s-1"), grey_sample("s-2")]))
    finally:
        await backend.close()
    assert "prompts go through the checkpoint's chat template, its default thinking" in caplog.text
    assert [r.decision for r in results] == ["unsure", "unsure"]  # random weights write no verdict


async def test_a_template_without_an_image_placeholder_stops_the_start(tmp_path: Path) -> None:
    folder = save_random_glm(tmp_path)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}<|user|>\n{% endfor %}<|assistant|>\n")
    backend = GlmBackend(GlmBackendConfig(model_path=folder, device="cpu"))
    with pytest.raises(BackendStartError, match=r"chat template cannot be used: .*renders 0 <\|image\|> placeholders"):
        await backend.start()


async def test_thinking_off_reaches_the_template(templated_glm: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = GlmBackendConfig(model_path=templated_glm, device="cpu", max_new_tokens=8, thinking=False)
    backend = GlmBackend(config)
    with caplog.at_level(logging.INFO, logger="cloud.backends.glm"):
        await backend.start()
    try:
        assert "thinking off" in caplog.text
        (asked,) = backend.chats([grey_sample("s-1")])
    finally:
        await backend.close()
    assert asked.endswith("<|assistant|>\n<think></think>Answer:")
