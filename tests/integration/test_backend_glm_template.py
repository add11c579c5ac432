"""A checkpoint folder with a chat template is asked through it: a tiny random Glm4v saved with its own template."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(
    ("resize", "bounds", "grid"),
    [
        ("square", {}, [1, 8, 8]),  # squeezed to 112 x 112, whatever the image's shape
        ("processor", {}, [1, 4, 12]),  # the processor's own bounds: 56 x 168 kept (its area is above their min)
        # scaled up, about 1:3 kept; GLM-4V's processor counts an image twice (two temporal frames): 2x112x280 >= min
        ("processor", {"min_pixels": 4 * 112 * 112, "max_pixels": 8 * 112 * 112}, [1, 8, 20]),
    ],
)
async def test_images_are_resized_as_configured_and_each_chat_holds_its_images_tokens(
    templated_glm: Path, monkeypatch: pytest.MonkeyPatch, resize: str, bounds: dict[str, int], grid: list[int]
) -> None:
    import cloud.backends.glm as glm_module
    from cloud.backends import glm_inputs

    seen: list[list[int]] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        pixels, grids = glm_inputs.pixel_inputs(*args, **kwargs)
        seen.extend(grids.tolist())
        return pixels, grids

    monkeypatch.setattr(glm_module, "pixel_inputs", recording)
    wide = replace(grey_sample("s-wide"), image=np.full((56, 168, 3), 90, np.uint8))
    config = GlmBackendConfig.model_validate(
        {"model_path": templated_glm, "device": "cpu", "max_new_tokens": 8, "resize": resize, **bounds}
    )
    backend = GlmBackend(config)
    await backend.start()
    try:
        # A second, square image in the same generate: the model raises unless each chat's tokens match its grid.
        results = judgements(await backend.infer([wide, grey_sample("s-2")]))
    finally:
        await backend.close()
    assert seen[0] == grid
    assert len(results) == 2


def test_pixel_bounds_out_of_order_are_refused_by_name(templated_glm: Path) -> None:
    with pytest.raises(ValueError, match="min_pixels 50176 is above max_pixels 12544"):
        GlmBackendConfig(model_path=templated_glm, resize="processor", min_pixels=50176, max_pixels=12544)


def test_thinking_tokens_are_counted_exactly_with_a_think_token_and_by_retokenizing_without(
    templated_glm: Path,
) -> None:
    from transformers import AutoTokenizer

    from cloud.backends.glm import thinking_tokens

    tokenizer = AutoTokenizer.from_pretrained(templated_glm, local_files_only=True)
    answer = '{"decision": "confirmed", "confidence": 0.9}'

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    reasoning = ids("cat 0.50 ibt")
    assert thinking_tokens(tokenizer, ids(answer)) == 0
    assert thinking_tokens(tokenizer, ids(f"<think>cat 0.50 ibt</think>{answer}")) == len(reasoning) + 2
    unfinished = ids("<think>cat 0.50 ibt cat")
    pad = [tokenizer.pad_token_id] * 3
    assert thinking_tokens(tokenizer, unfinished + pad) == len(unfinished)  # still thinking: all it wrote
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    marked = ids("<think>cat 0.50 ibt</think>") + ids(answer)
    assert thinking_tokens(tokenizer, marked) == len(ids("<think>cat 0.50 ibt</think>"))
