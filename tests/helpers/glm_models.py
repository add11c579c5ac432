"""GLM-4V models for backend tests: one with random weights in the world GLM's shape, saved like a trained
one; the committed world GLM and the bound its measured agreement is checked against."""

from __future__ import annotations

import math
from pathlib import Path

# The committed world GLM (sim/glm) and its eval.json.
WORLD_GLM = Path(__file__).resolve().parents[2] / "sim" / "models" / "glm-world"


def save_random_glm(folder: Path) -> Path:
    """Save model (fp32, seeded random weights), tokenizer and image processor in `folder`; returns it."""
    import torch
    from transformers import Glm4vForConditionalGeneration

    from sim.glm import model as shape

    corpus = ['{"decision": "confirmed", "labels": ["cat"], "confidence": 0.9}', "Edge: cat 0.50\nMined: ibt"] * 20
    tokenizer = shape.train_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration(shape.build_config(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shape.build_image_processor().save_pretrained(folder)
    return folder


def agreement_bound(rate: float, samples: int) -> float:
    """The reported rate less a margin: 0.05 plus two binomial standard errors at this sample count."""
    return rate - 0.05 - 2 * math.sqrt(rate * (1 - rate) / samples)
