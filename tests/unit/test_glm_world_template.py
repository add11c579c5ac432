"""The world GLM asks through a chat template like a real checkpoint: the template renders exactly the
built-in chat it was trained on, and answers are decoded with their markup tokens kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from cloud.backends.glm_inputs import WORLD_CHAT_TEMPLATE, answer_text, chat_prefix, chat_text
from cloud.backends.verdict_text import parse_answer

WORLD_GLM = Path(__file__).resolve().parents[2] / "sim" / "models" / "glm-world"


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(WORLD_GLM, local_files_only=True)


def test_the_committed_world_glm_carries_the_template(tokenizer: object) -> None:
    assert getattr(tokenizer, "chat_template", None) == WORLD_CHAT_TEMPLATE


@pytest.mark.parametrize(
    "prompt",
    ["Edge: cat 0.41 at (3, 4, 50, 60). Is it a cat?", 'braces {"a": 1} and\nnew lines', "<|image|> in text? no"],
)
def test_the_template_renders_the_chat_the_world_glm_was_trained_on(tokenizer: object, prompt: str) -> None:
    if "<|image|>" in prompt:  # one placeholder per image is the contract: text holding one is refused
        with pytest.raises(ValueError, match="renders 2"):
            chat_text(tokenizer, prompt, 9)
        return
    assert chat_text(tokenizer, prompt, 9) == chat_prefix(prompt, 9)


def test_an_answer_keeps_its_markup_tokens_and_ends_at_the_turn(tmp_path: Path) -> None:
    # A GLM-4.xV tokenizer holds the answer markup as special tokens; skipping them would erase it.
    markup = AutoTokenizer.from_pretrained(WORLD_GLM, local_files_only=True)
    markup.add_special_tokens({"additional_special_tokens": ["<think>", "</think>", "<answer>", "</answer>"]})
    verdict = '{"decision": "confirmed", "labels": ["cat"], "confidence": 0.9}'
    answer = f"<think>grey fur, whiskers</think><answer>{verdict}</answer>"
    ids = markup(answer + "<|endoftext|><|user|>", add_special_tokens=False)["input_ids"]
    assert "<think>" not in markup.decode(ids, skip_special_tokens=True), "the trap answer_text avoids"
    text = answer_text(markup, ids)
    assert text == answer
    parsed = parse_answer(text)
    assert parsed is not None and parsed.decision == "confirmed" and parsed.labels == ("cat",)
    assert parsed.reasoning_chars == len("grey fur, whiskers")
