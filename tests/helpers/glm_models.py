"""A GLM-4V with random weights in the world GLM's shape, saved like a trained one (for backend tests)."""

from __future__ import annotations

from pathlib import Path


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
