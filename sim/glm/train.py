"""Train the world GLM: `python -m sim.glm.train --out sim/models/glm-world` (~20 min on 2 cores).

A ~3M-parameter `Glm4vForConditionalGeneration` from scratch on crops of the sim world (see
`sim/glm/crops.py`) and on the edge detector's own detections of unseen frames (`sim/glm/hard.py`),
asked with the cloud's own prompt (`cloud.backends.verdict_text`) and taught to answer its JSON. Loss
on the answer tokens only. Seeded; bounded by steps and by wall time, whichever comes first. Saves
fp16 safetensors, the tokenizer and the image processor config in `--out`, plus `train.json` (steps,
wall time, losses, versions).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from cloud.backends.glm_inputs import (
    END_OF_TEXT,
    WORLD_CHAT_TEMPLATE,
    chat_prefix,
    image_tokens_for,
    pixel_inputs,
    to_model_rgb,
)
from cloud.backends.verdict_text import DEFAULT_QUESTION, format_answer, format_prompt
from sim.glm import model as shape
from sim.glm.crops import Crop, draw_claim, frame_crops, true_answer
from sim.glm.hard import edge_detection_crops

app = typer.Typer(add_completion=False, help=__doc__)


@dataclass
class Example:
    """One training sequence: prompt tokens (prefix) and answer tokens, and the crop's index."""

    prefix: list[int]
    answer: list[int]
    crop: int


def crop_set(split: str, frames: int, seed: int) -> list[Crop]:
    """Crops of `frames` generated frames of `split`, the crop jitter seeded by (seed, split)."""
    rng = np.random.default_rng([seed, 7, len(split), frames])
    return list(frame_crops(split, frames, seed, rng))


def make_example(tokenizer: Any, crop: Crop, index: int, rng: np.random.Generator, image_tokens: int) -> Example:
    """The crop's edge claim (drawn when it has none) with prompt and answer tokenized apart (the answer is
    what is learned)."""
    claim = crop.claim or draw_claim(crop.label, rng)
    prompt = format_prompt(claim.detections, claim.reason, DEFAULT_QUESTION)
    answer = format_answer(true_answer(crop.label, crop.hard, claim)) + END_OF_TEXT
    prefix_ids = tokenizer(chat_prefix(prompt, image_tokens), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return Example(prefix_ids, answer_ids, index)


def collate(examples: list[Example], pad_id: int, image_token_id: int) -> dict[str, Any]:
    """Left-padded ids, mask, labels (-100 but on answers) and `mm_token_type_ids`."""
    import torch

    length = max(len(e.prefix) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        sequence = example.prefix + example.answer
        start = length - len(sequence)
        ids[row, start:] = torch.tensor(sequence)
        mask[row, start:] = 1
        labels[row, start + len(example.prefix) :] = torch.tensor(example.answer)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "mm_token_type_ids": (ids == image_token_id).long(),
    }


def crop_pixels(processor: Any, crops: list[Crop], chunk: int = 256) -> tuple[Any, Any]:
    """Every crop's patches as one fp16 tensor [crops, patches, dim] (same patch count each) and their grids."""
    import torch

    parts, grids = [], []
    for first in range(0, len(crops), chunk):
        images = [to_model_rgb(c.image, shape.IMAGE_SIZE) for c in crops[first : first + chunk]]
        pixels, grid = pixel_inputs(processor, images)
        parts.append(pixels.view(len(images), -1, pixels.shape[-1]).half())
        grids.append(grid)
    return torch.cat(parts), torch.cat(grids)


def learning_rate(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def tokenizer_corpus(crops: list[Crop], seed: int, passes: int = 4) -> list[str]:
    """Prompts and answers as training will draw them, to fit the BPE merges on."""
    rng = np.random.default_rng([seed, 11])
    texts = []
    for _ in range(passes):
        for crop in crops:
            claim = crop.claim or draw_claim(crop.label, rng)
            texts.append(format_prompt(claim.detections, claim.reason, DEFAULT_QUESTION))
            texts.append(format_answer(true_answer(crop.label, crop.hard, claim)))
    return texts


def versions() -> dict[str, str]:
    """Library versions the model was trained with."""
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Folder the model is saved in.")] = Path("sim/models/glm-world"),
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps (the schedule's length).")] = 2400,
    minutes: Annotated[float, typer.Option(min=0.1, help="Wall-time cap; training stops when reached.")] = 40.0,
    seed: Annotated[int, typer.Option(help="Seed of the world, the crops, the claims and the weights.")] = 0,
    train_frames: Annotated[int, typer.Option(min=10, help="Generated frames (train split) cropped.")] = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per step.")] = 32,
    lr: Annotated[float, typer.Option(min=1e-6, help="Peak AdamW learning rate.")] = 1e-3,
    threads: Annotated[int, typer.Option(min=1, help="torch intra-op threads.")] = 2,
    edge_frames: Annotated[
        int, typer.Option(min=0, help="Unseen frames whose edge detections become hard crops (sim/glm/hard.py).")
    ] = 3000,
    edge_model: Annotated[Path, typer.Option(help="The edge detector ONNX those detections come from.")] = Path(
        "sim/models/edge.onnx"
    ),
) -> None:
    """Generate crops, fit the tokenizer, train the model, save it."""
    import torch
    from tqdm import tqdm
    from transformers import Glm4vForConditionalGeneration

    started = time.monotonic()
    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(threads)
    crops = crop_set("train", train_frames, seed)
    hard = list(edge_detection_crops(edge_model, edge_frames, seed)) if edge_frames else []
    typer.echo(
        f"{len(crops)} train crops from {train_frames} frames and {len(hard)} of the edge's detections on "
        f"{edge_frames} more ({time.monotonic() - started:.0f} s)"
    )
    crops += hard
    tokenizer = shape.train_tokenizer(tokenizer_corpus(crops, seed))
    config = shape.build_config(tokenizer)
    processor = shape.build_image_processor()
    model = Glm4vForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    typer.echo(f"model: {params / 1e6:.2f} M parameters, vocab {len(tokenizer)}")
    image_tokens = image_tokens_for(shape.IMAGE_SIZE, shape.PATCH_SIZE, shape.MERGE_SIZE)
    pixels, grid = crop_pixels(processor, crops)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng([seed, 13])
    losses: list[float] = []
    deadline = started + minutes * 60
    model.train()
    bar = tqdm(range(steps), desc="glm-world", unit="step")
    step = 0
    for step in bar:
        if time.monotonic() > deadline:
            typer.echo(f"wall-time cap reached at step {step}")
            break
        chosen = rng.choice(len(crops), size=batch_size, replace=False)
        examples = [make_example(tokenizer, crops[i], int(i), rng, image_tokens) for i in chosen]
        inputs = collate(examples, tokenizer.pad_token_id, config.image_token_id)
        batch_pixels = pixels[torch.as_tensor(chosen)].reshape(-1, pixels.shape[-1]).float()
        batch_grid = grid[torch.as_tensor(chosen)]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        loss = model(**inputs, pixel_values=batch_pixels, image_grid_thw=batch_grid).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    else:
        step = steps
    wall = time.monotonic() - started
    save(model, tokenizer, processor, out)
    summary = {
        "seed": seed,
        "steps": step,
        "steps_planned": steps,
        "batch_size": batch_size,
        "lr": lr,
        "train_frames": train_frames,
        "train_crops": len(crops),
        "edge_frames": edge_frames,
        "edge_detection_crops": len(hard),
        "edge_model": str(edge_model),
        "parameters": params,
        "wall_time_s": round(wall, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 5) if losses else None,
        "loss_every_100": [round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)],
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "versions": versions(),
    }
    (out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(f"saved {out} after {step} steps in {wall:.0f} s (loss {summary['final_loss']})")


def save(model: Any, tokenizer: Any, processor: Any, out: Path) -> None:
    """fp16 safetensors, tokenizer files and image processor config, loadable by `from_pretrained`."""
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    tokenizer.chat_template = WORLD_CHAT_TEMPLATE  # one path: the backend and any server render chat_prefix
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)


if __name__ == "__main__":
    app()
