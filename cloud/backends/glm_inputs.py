"""GLM-4V model inputs without `Glm4vProcessor` (it needs torchvision): chat text, token ids, pixels.

Shared by the `glm` backend and the world-GLM training recipe (`sim/glm`), so a model is trained on
exactly the inputs it is later asked with. A checkpoint that carries a chat template
(`chat_template.jinja`, or `chat_template` in tokenizer_config.json: real GLM-4.xV checkpoints do)
is asked through it (`chat_text`): `apply_chat_template` with the image in the user message, then the
template's one `<|image|>` expanded to one per merged vision patch, as Glm4vProcessor does. Without
one the chat is built by hand the GLM-4.1V way (`chat_prefix`, what the world GLM is trained on):
the image tokens between `<|begin_of_image|>` and `<|end_of_image|>`, then the prompt, then
`<|assistant|>`. Batches are padded on the left (generation appends on the right).

torch and transformers are imported inside the functions that need them: importing this module
(the backend's config does) must not load them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import torch

# GLM-4.1V's special tokens in upstream order (ids 151329...151344 there). A local tokenizer that puts
# them first keeps the same relative order; the model config's token ids point at its own ids.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
)
END_OF_TEXT = "<|endoftext|>"
IMAGE_TOKEN = "<|image|>"
# The processor refuses aspect ratios above 200; below a few pixels a side an image is no picture.
MIN_IMAGE_SIDE = 4
MAX_ASPECT_RATIO = 200.0


class BadImageError(ValueError):
    """An image the model cannot be shown (empty, degenerate, wrong channels); the message says why."""


# The built-in chat as a chat template: a checkpoint saved with it (the world GLM is) renders through
# `apply_chat_template`, in this backend and in servers such as `transformers serve`, exactly what
# `chat_prefix` writes (tests/unit/test_glm_world_template.py holds them equal).
WORLD_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "<|{{ message.role }}|>{{ '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'image' -%}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{ '\\n' }}{%- endif -%}"
)


def chat_prefix(prompt: str, image_tokens: int) -> str:
    """The text before the answer: the user turn with the image placeholders and `prompt`, then the assistant tag."""
    image = "<|begin_of_image|>" + IMAGE_TOKEN * image_tokens + "<|end_of_image|>"
    return f"[gMASK]<sop><|user|>\n{image}{prompt}<|assistant|>\n"


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template (loaded from chat_template.jinja or tokenizer_config.json)."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_text(tokenizer: Any, prompt: str, image_tokens: int, template_kwargs: dict[str, Any] | None = None) -> str:
    """The text before the answer, through the tokenizer's chat template when it has one, else `chat_prefix`.

    The template renders the image as one `<|image|>`; it is expanded to `image_tokens` of them.
    `template_kwargs` go to the template (e.g. enable_thinking). ValueError names a template that
    does not render exactly one image placeholder.
    """
    if not has_chat_template(tokenizer):
        return chat_prefix(prompt, image_tokens)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **(template_kwargs or {}))
    )
    found = text.count(IMAGE_TOKEN)
    if found != 1:
        raise ValueError(
            f"the checkpoint's chat template renders {found} {IMAGE_TOKEN} placeholders for one image (expected 1); "
            "fix its chat_template.jinja or remove it to use the built-in GLM-4.1V chat"
        )
    return text.replace(IMAGE_TOKEN, IMAGE_TOKEN * image_tokens)


def answer_text(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """The generated answer as text, up to the first end-of-turn token, with its markup tokens kept.

    GLM-4.xV tokenizers hold `<think>`, `<answer>` and `<|begin_of_box|>` as special tokens, so
    `skip_special_tokens=True` would erase the structure the answer parser reads; only what ends
    the turn (end of text, the next role tag, padding) is cut here.
    """
    text = str(tokenizer.decode(list(token_ids), skip_special_tokens=False))
    stops = {END_OF_TEXT, "<|user|>", "<|observation|>", "<|system|>"}
    for token in (tokenizer.eos_token, tokenizer.pad_token):
        if token:
            stops.add(str(token))
    cut = min((text.find(stop) for stop in stops if stop in text), default=len(text))
    return text[:cut].strip()


def image_tokens_for(image_size: int, patch_size: int, merge_size: int) -> int:
    """How many `<|image|>` tokens a square `image_size` image takes (one per merged patch)."""
    side = image_size // patch_size
    return (side // merge_size) ** 2


def check_image(image: NDArray[np.uint8]) -> None:
    """Raise BadImageError unless `image` is an HxWx3 uint8 picture the processor accepts."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise BadImageError(f"image has shape {tuple(image.shape)} (expected HxWx3)")
    height, width = int(image.shape[0]), int(image.shape[1])
    if min(height, width) < MIN_IMAGE_SIDE:
        raise BadImageError(f"image is {width}x{height} pixels (at least {MIN_IMAGE_SIDE} a side needed)")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise BadImageError(f"image is {width}x{height} pixels (aspect ratio above {MAX_ASPECT_RATIO:.0f})")


def to_model_rgb(image_bgr: NDArray[np.uint8], image_size: int | None) -> NDArray[np.uint8]:
    """The BGR image squeezed to `image_size` square (the size the model was trained on), as RGB.

    `image_size` None keeps the size: the image processor resizes it (aspect kept, within its pixel bounds).
    """
    check_image(image_bgr)
    if image_size is None:
        return np.ascontiguousarray(image_bgr[:, :, ::-1])
    height, width = image_bgr.shape[:2]
    interp = cv2.INTER_AREA if min(height, width) > image_size else cv2.INTER_LINEAR
    resized = cv2.resize(image_bgr, (image_size, image_size), interpolation=interp)
    return np.ascontiguousarray(resized[:, :, ::-1])


def pixel_inputs(
    processor: Any, images_rgb: Sequence[NDArray[np.uint8]], size: dict[str, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values` (all patches, concatenated) and `image_grid_thw` for RGB images through the image processor.

    `size` ({"shortest_edge": min pixels, "longest_edge": max pixels}) bounds its resizing; None: its own.
    """
    features = processor(images=list(images_rgb), return_tensors="pt", **({"size": size} if size else {}))
    return features["pixel_values"], features["image_grid_thw"]


def text_inputs(tokenizer: Any, texts: Sequence[str], image_token_id: int) -> dict[str, torch.Tensor]:
    """Token ids, attention mask and `mm_token_type_ids` (1 on image tokens) for `texts`, padded on the left."""
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True, padding_side="left")
    input_ids = encoded["input_ids"]
    return {
        "input_ids": input_ids,
        "attention_mask": encoded["attention_mask"],
        "mm_token_type_ids": (input_ids == image_token_id).long(),
    }
