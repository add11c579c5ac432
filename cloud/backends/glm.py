"""The `glm` backend: a GLM-4V vision-language model through transformers, asked about each sample's image.

The model, its tokenizer and its image processor load from a local folder (nothing is downloaded):
the world GLM trained by `make train-glm`, or any GLM-4.1V/GLM-4V checkpoint saved with
`save_pretrained`. Everything torch does runs in one dedicated worker thread; `infer` runs ONE
batched, left-padded `generate` for the whole batch and parses each answer with `verdict_text`.

The prompt goes through the checkpoint's own chat template when the folder has one (real GLM-4.xV
checkpoints do; `glm_inputs.chat_text`), else through the built-in GLM-4.1V chat the world GLM knows.

Shared-prefix KV-cache reuse is not done: the only text every sample shares is the 5 tokens before
the image ("[gMASK]<sop><|user|>\\n<|begin_of_image|>"); the image tokens and the edge's claims that
follow differ per sample, and left padding puts even those 5 tokens at different positions. There is
nothing worth caching.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud.backends.glm_inputs import (
    BadImageError,
    answer_text,
    chat_text,
    has_chat_template,
    pixel_inputs,
    text_inputs,
    to_model_rgb,
)
from cloud.backends.protocol import BackendStartError
from cloud.backends.verdict_text import DEFAULT_QUESTION, THINK_END, build_prompt, parse_answer, split_answer, to_result
from cloud.convert import BackendResult, SampleInput
from cloud.metrics import CloudMetrics
from common.boxes import padded_union

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class GlmBackendConfig(BaseModel):
    """A local GLM-4V folder (config, safetensors, tokenizer, image processor) and how it is asked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["glm"] = Field(default="glm", description="Selects the GLM-4V (transformers) backend.")
    model_path: Path = Field(
        description="Folder saved by save_pretrained: config.json, safetensors, tokenizer, preprocessor_config.json."
    )
    model_name: str = Field(default="", description="Model name written in verdicts; empty: the folder's name.")
    model_version: str = Field(
        default="", description="Model version written in verdicts; empty: 'sha256:' and 12 hex of the weights."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="Where the model runs; auto: CUDA when torch sees a GPU, else the CPU."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Weights and activations; auto: bf16 on CUDA if supported, else fp16; fp32 on CPU."
    )
    max_new_tokens: int = Field(default=64, ge=8, le=2048, description="Most tokens generated per answer.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 decodes greedily.")
    prompt_template: str | None = Field(
        default=None,
        description="User text with {detections}, {reason} and {question}; empty: the template the world GLM knows.",
    )
    question: str = Field(default=DEFAULT_QUESTION, min_length=1, description="The question asked about each image.")
    max_batch_size: int = Field(default=8, ge=1, le=256, description="Most samples per generate call.")
    resize: Literal["square", "processor"] = Field(
        default="square",
        description=(
            "square: every image is squeezed to image_size x image_size (what the world GLM is trained on); "
            "processor: the checkpoint's image processor resizes it, keeping its aspect, to between min_pixels and "
            "max_pixels (what real GLM-4.xV checkpoints expect; GLM-4V's processor counts an image's pixels twice, as "
            "two temporal frames)."
        ),
    )
    image_size: int = Field(
        default=112,
        ge=28,
        le=2016,
        description="resize square: side (pixels) images are squeezed to, the model's trained size; a multiple of 28.",
    )
    min_pixels: int | None = Field(
        default=None,
        ge=28 * 28,
        le=1 << 26,
        description="resize processor: fewest pixels an image is scaled up to; unset: the checkpoint's own.",
    )
    max_pixels: int | None = Field(
        default=None,
        ge=28 * 28,
        le=1 << 26,
        description="resize processor: most pixels an image is scaled down to; unset: the checkpoint's own.",
    )
    compile: bool = Field(default=False, description="torch.compile the model (CUDA only; ignored on the CPU).")
    threads: int = Field(default=0, ge=0, le=256, description="torch intra-op threads on the CPU; 0: torch decides.")
    thinking: bool | None = Field(
        default=None,
        description=(
            "GLM-4.1V and later think before they answer: false asks for no thinking (enable_thinking=false to the "
            "checkpoint's chat template), true for thinking (raise max_new_tokens: a thought takes hundreds); "
            "unset: the template's default. Ignored without a chat template."
        ),
    )
    focus: Literal["claims", "image"] = Field(
        default="claims",
        description=(
            "What the model is shown of a whole-frame sample: claims, the padded union of the edge's boxes "
            "(the region a crop-mode edge would send); image, the whole frame. Crops are shown as they came."
        ),
    )

    @field_validator("image_size")
    @classmethod
    def _whole_merged_patches(cls, value: int) -> int:
        if value % 28:
            raise ValueError(f"{value} is not a multiple of 28 (patch 14 x merge 2); try {round(value / 28) * 28}")
        return value

    @model_validator(mode="after")
    def _pixels_ordered(self) -> GlmBackendConfig:
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}")
        return self

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            value.format(detections="", reason="", question="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"cannot be filled ({type(err).__name__}: {err}); use only {{detections}}, {{reason}}, {{question}} "
                "and double other braces"
            ) from err
        return value


@dataclass
class _Loaded:
    """What `start` loads: the model and its text and image front ends, and where they run."""

    model: Any
    tokenizer: Any
    processor: Any
    device: str
    dtype: Any
    image_token_id: int
    merge_size: int


class GlmBackend:
    """Judges samples by asking a GLM-4V model (transformers) about each image, one batched generate per batch."""

    name = "glm"

    def __init__(self, config: GlmBackendConfig, metrics: CloudMetrics | None = None) -> None:
        """Keep the config; the model loads in `start`. `metrics` counts unparsable answers and bad images."""
        self._config = config
        self._metrics = metrics or CloudMetrics()
        self._loaded: _Loaded | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._version = config.model_version
        self._template_kwargs = {} if config.thinking is None else {"enable_thinking": config.thinking}

    @property
    def model_name(self) -> str:
        """Name of the model (the folder's name unless configured)."""
        return self._config.model_name or self._config.model_path.name

    @property
    def model_version(self) -> str:
        """Version of the model ("unknown" before `start`)."""
        return self._version or "unknown"

    @property
    def max_batch_size(self) -> int:
        """Most samples per `infer` call."""
        return self._config.max_batch_size

    @property
    def uses_chat_template(self) -> bool | None:
        """Whether prompts go through the checkpoint's own chat template (None before `start`)."""
        return has_chat_template(self._loaded.tokenizer) if self._loaded is not None else None

    @property
    def device(self) -> str | None:
        """Where the model runs ("cpu", "cuda"), None before `start`."""
        return self._loaded.device if self._loaded is not None else None

    async def start(self) -> None:
        """Load model, tokenizer and image processor in the backend's thread; again is a no-op."""
        if self._loaded is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glm-backend")
        try:
            self._loaded = await asyncio.get_running_loop().run_in_executor(executor, self._load)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    def _load(self) -> _Loaded:
        config = self._config
        path = config.model_path
        weights = _check_folder(path)
        import torch
        from transformers import AutoTokenizer, Glm4vForConditionalGeneration, Glm4vImageProcessorPil

        device, dtype = _placement(config, torch)
        if device == "cpu" and config.threads:
            torch.set_num_threads(config.threads)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            processor = Glm4vImageProcessorPil.from_pretrained(path, local_files_only=True)
            model: Any = Glm4vForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as err:
            raise BackendStartError(f"glm backend: {path} cannot be loaded: {err}") from err
        model = model.to(device).eval()
        if config.compile and device == "cuda":
            # generate() calls forward once per token: compile that (compiling the module would not reach it).
            model.forward = torch.compile(model.forward)
        elif config.compile:
            logger.warning("glm backend: compile is set but the model runs on the CPU; not compiling")
        if not self._version:
            self._version = "sha256:" + _sha256(weights)[:12]
        params = sum(p.numel() for p in model.parameters())
        if has_chat_template(tokenizer):
            from jinja2 import TemplateError

            try:  # a template that cannot render our question is a start-up error, not one per sample
                chat_text(tokenizer, "probe", 1, self._template_kwargs)
            except (TemplateError, TypeError, ValueError) as err:
                raise BackendStartError(f"glm backend: {path}: the chat template cannot be used: {err}") from err
            thinking = {None: "its default thinking", True: "thinking on", False: "thinking off"}[config.thinking]
            logger.info("glm backend: %s: prompts go through the checkpoint's chat template, %s", path, thinking)
        else:
            logger.info("glm backend: %s has no chat template; prompts use the built-in GLM-4.1V chat", path)
            if config.thinking is not None:
                logger.warning("glm backend: thinking is set but %s has no chat template to pass it to", path)
        logger.info(
            "glm backend: %s (%s, %.1f M parameters) on %s in %s; images %s, batch %d, max %d new tokens, %s",
            path,
            self._version,
            params / 1e6,
            device,
            str(dtype).removeprefix("torch."),
            f"{config.image_size}x{config.image_size}"
            if config.resize == "square"
            else f"resized by the processor within {config.min_pixels or 'its'}-{config.max_pixels or 'its'} pixels",
            config.max_batch_size,
            config.max_new_tokens,
            "greedy" if config.temperature == 0 else f"temperature {config.temperature}",
        )
        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            processor=processor,
            device=device,
            dtype=dtype,
            image_token_id=int(model.config.image_token_id),
            merge_size=int(processor.merge_size),
        )

    async def infer(self, batch: list[SampleInput], deadline: float | None = None) -> list[BackendResult]:
        """Ask about every image of the batch in one generate call; one result per sample, in order.

        An image the model cannot be shown is "unsure" for that sample alone (counted as a bad_image
        backend error); an answer with no valid JSON verdict is "unsure" too (counted as unparsable).
        """
        answers = await self.ask(batch)
        results = []
        for sample, answer in zip(batch, answers, strict=True):
            if isinstance(answer, BadImageError):
                self._metrics.backend_errors.labels(self.name, "bad_image").inc()
                results.append(BackendResult("unsure", [], f"glm backend: sample {sample.sample_id}: {answer}", 0.0))
                continue
            parsed = parse_answer(answer.text)
            if parsed is None:
                self._metrics.backend_unparsable.labels(self.name).inc()
            result = to_result(parsed, answer.text, sample)
            results.append(replace(result, reasoning_tokens=answer.thinking_tokens, thinking_ms=answer.thinking_ms))
        return results

    async def ask(self, batch: list[SampleInput]) -> list[Generated | BadImageError]:
        """The model's answer to each sample (one generate call), or why its image could not be shown."""
        if self._loaded is None or self._executor is None:
            raise RuntimeError(f"glm backend {self._config.model_path}: infer called before start")
        if not batch:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._ask_blocking, self._loaded, batch)

    def _ask_blocking(self, loaded: _Loaded, batch: list[SampleInput]) -> list[Generated | BadImageError]:
        answers: list[Generated | BadImageError] = []
        images: list[Any] = []
        grids: list[Any] = []
        asked: list[int] = []
        for index, sample in enumerate(batch):
            try:
                shown = focused_image(sample) if self._config.focus == "claims" else sample.image
                pixels, grid = pixel_inputs(loaded.processor, [self._model_rgb(shown)], self._processor_size)
            except BadImageError as err:
                answers.append(err)
                continue
            except ValueError as err:  # the image processor's own refusal
                answers.append(BadImageError(str(err)))
                continue
            answers.append(Generated(""))
            images.append(pixels)
            grids.append(grid)
            asked.append(index)
        if asked:
            texts = self._generate(loaded, [batch[i] for i in asked], images, grids)
            for index, text in zip(asked, texts, strict=True):
                answers[index] = text
        return answers

    def _model_rgb(self, image_bgr: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """The image as the model is shown it: squeezed to the square size, or as it is for the processor to resize."""
        config = self._config
        return to_model_rgb(image_bgr, config.image_size if config.resize == "square" else None)

    @property
    def _processor_size(self) -> dict[str, int] | None:
        """The image processor's pixel bounds when configured (resize processor), else its own."""
        config = self._config
        if config.resize != "processor" or (config.min_pixels is None and config.max_pixels is None):
            return None
        own = self._loaded.processor.size if self._loaded is not None else None
        low = config.min_pixels if config.min_pixels is not None else int(getattr(own, "shortest_edge", 0) or 28 * 28)
        high = config.max_pixels if config.max_pixels is not None else int(getattr(own, "longest_edge", 0) or 1 << 26)
        return {"shortest_edge": low, "longest_edge": max(low, high)}

    def chats(self, batch: list[SampleInput]) -> list[str]:
        """The chat text each sample is asked with (its image as one placeholder), for inspection."""
        if self._loaded is None:
            raise RuntimeError(f"glm backend {self._config.model_path}: chats called before start")
        return [self._chat(self._loaded, sample, 1) for sample in batch]

    def _chat(self, loaded: _Loaded, sample: SampleInput, image_tokens: int) -> str:
        prompt = build_prompt(sample, self._config.question, self._config.prompt_template)
        return chat_text(loaded.tokenizer, prompt, image_tokens, self._template_kwargs)

    def _generate(
        self, loaded: _Loaded, samples: list[SampleInput], images: list[Any], grids: list[Any]
    ) -> list[Generated]:
        """One left-padded generate call for `samples`; the decoded new text of each, and its thinking."""
        import torch

        config = self._config
        texts = []
        for sample, grid in zip(samples, grids, strict=True):
            texts.append(self._chat(loaded, sample, int(grid.prod()) // loaded.merge_size**2))
        inputs = {
            k: v.to(loaded.device) for k, v in text_inputs(loaded.tokenizer, texts, loaded.image_token_id).items()
        }
        sampling: dict[str, Any] = {"do_sample": False}
        if config.temperature > 0:
            sampling = {"do_sample": True, "temperature": config.temperature}
        started = time.perf_counter()
        with torch.inference_mode():
            output = loaded.model.generate(
                **inputs,
                pixel_values=torch.cat(images).to(loaded.device, loaded.dtype),
                image_grid_thw=torch.cat(grids).to(loaded.device),
                max_new_tokens=config.max_new_tokens,
                pad_token_id=loaded.tokenizer.pad_token_id,
                eos_token_id=loaded.tokenizer.eos_token_id,
                **sampling,
            )
        generate_ms = (time.perf_counter() - started) * 1000
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        steps = max(1, int(new_tokens.shape[1]))  # every row took part in every decoding step
        generated = []
        for row in new_tokens:
            ids = row.tolist()
            thought = thinking_tokens(loaded.tokenizer, ids)
            generated.append(Generated(answer_text(loaded.tokenizer, ids), thought, generate_ms * thought / steps))
        return generated

    async def close(self) -> None:
        """Release the model and its thread (a running generate finishes in the background)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._loaded = None


@dataclass(frozen=True, slots=True)
class Generated:
    """One answer of a generate call: its text, the tokens spent thinking, and their share of the call's time."""

    text: str
    thinking_tokens: int = 0
    thinking_ms: float = 0.0


def thinking_tokens(tokenizer: Any, token_ids: list[int]) -> int:
    """How many of the generated `token_ids` are thinking: up to and including `</think>`, or all of them when
    the thinking never ended; 0 without a think block.

    GLM-4.xV tokenizers hold `</think>` as one token: its position is exact. Otherwise the reasoning text
    is tokenized again (an estimate within a token or two).
    """
    end_id = tokenizer.convert_tokens_to_ids(THINK_END) if THINK_END in tokenizer.get_vocab() else None
    if end_id is not None and end_id in token_ids:
        return token_ids.index(end_id) + 1
    parts = split_answer(answer_text(tokenizer, token_ids))
    if parts.thinking_unfinished:
        pad = tokenizer.pad_token_id
        return sum(1 for token in token_ids if token != pad)
    if not parts.reasoning:
        return 0
    return len(tokenizer(parts.reasoning, add_special_tokens=False)["input_ids"]) + 2  # and the two tags


def focused_image(sample: SampleInput) -> NDArray[np.uint8]:
    """The part of `sample.image` the edge's boxes claim: their padded union when the image is the whole frame.

    A model trained at a small fixed size (the world GLM sees 112 pixels) can tell an object from a
    crop around it but not from a whole frame squeezed to that size, where a person is a few pixels.
    Focusing a full-frame sample on its claims shows it what a crop-mode edge would have sent. The
    edge's crop rule (`common.boxes.padded_union`) draws the region, so both show the same thing.
    A crop, and a frame without detections (motion), are shown whole.
    """
    if sample.crop is not None or not sample.detections:
        return sample.image
    height, width = int(sample.image.shape[0]), int(sample.image.shape[1])
    frame_width, frame_height = sample.frame_size
    sx, sy = width / frame_width, height / frame_height  # the frame may have been sent at a smaller size
    boxes = [(d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy) for d in sample.detections]
    region = padded_union((width, height), boxes)
    if region is None:
        return sample.image
    x1, y1, x2, y2 = region
    return sample.image[y1:y2, x1:x2]


def _check_folder(path: Path) -> Path:
    """The weights file of a model folder; BackendStartError names what is missing."""
    if not path.is_dir():
        raise BackendStartError(
            f"glm backend: model_path {path} does not exist "
            "(train one with make train-glm, or point at a GLM-4V folder)"
        )
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if not (path / name).is_file():
            raise BackendStartError(f"glm backend: {path / name} is missing (save the model with save_pretrained)")
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise BackendStartError(f"glm backend: {path / WEIGHT_FILES[0]} is missing (no safetensors weights in {path})")


def _placement(config: GlmBackendConfig, torch: Any) -> tuple[str, Any]:
    """Device and dtype from the config and what torch sees; the choice (and any fallback) is logged."""
    has_cuda = bool(torch.cuda.is_available())
    device = "cuda" if config.device in ("auto", "cuda") and has_cuda else "cpu"
    if config.device == "cuda" and not has_cuda:
        logger.warning("glm backend: device cuda asked but torch %s sees no GPU; running on the CPU", torch.__version__)
    if config.dtype != "auto":
        dtype = getattr(torch, config.dtype)
        reason = "as configured"
    elif device == "cuda" and torch.cuda.is_bf16_supported():
        dtype, reason = torch.bfloat16, "auto: the GPU supports bf16"
    elif device == "cuda":
        dtype, reason = torch.float16, "auto: the GPU has no bf16"
    else:
        dtype, reason = torch.float32, "auto: CPU"
    logger.info("glm backend: device %s, dtype %s (%s)", device, str(dtype).removeprefix("torch."), reason)
    return device, dtype


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
