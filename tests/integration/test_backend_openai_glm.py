"""The openai backend against the OpenAI-compatible server backed by a real GLM-4V (sim.openai_glm) on loopback.

A random-weight GLM-4V of the world GLM's shape shows the plumbing (its nonsense is unsure and counted,
concurrent requests share a generate, a prompt it was not trained on is refused); the committed world
GLM shows that verdicts through HTTP agree with the ground truth of held-out world crops at the rate
its report states.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.backends import OpenAIBackend, OpenAIBackendConfig
from cloud.convert import CloudDetection, SampleFailure, SampleInput
from cloud.metrics import CloudMetrics
from sim.glm.evaluate import held_out_cases
from sim.openai_glm import GlmGenerator
from sim.openai_server import ServerStats, create_app, serving
from tests.helpers.backends import judgements

# torch on every core, under deadlines sized for one model at a time (tests/conftest.py).
pytestmark = pytest.mark.one_at_a_time("glm")

WORLD_GLM = Path(__file__).resolve().parents[2] / "sim" / "models" / "glm-world"
MODEL = "glm-world"
# Test-split frames whose crops are asked about (a fixed, seeded set; the glm backend's test uses the same).
AGREEMENT_FRAMES = 6


@pytest.fixture(scope="module")
def random_glm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GLM-4V with random weights (the world GLM's shape), its tokenizer and image processor, saved."""
    import torch
    from transformers import Glm4vForConditionalGeneration

    from sim.glm import model as shape

    folder = tmp_path_factory.mktemp("random-glm")
    corpus = ['{"decision": "confirmed", "labels": ["cat"], "confidence": 0.9}', "Edge: cat 0.50\nMined: ibt"] * 20
    tokenizer = shape.train_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    Glm4vForConditionalGeneration(shape.build_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shape.build_image_processor().save_pretrained(folder)
    return folder


@asynccontextmanager
async def glm_behind_http(
    model_path: Path, metrics: CloudMetrics, **settings: Any
) -> AsyncIterator[tuple[OpenAIBackend, GlmGenerator, ServerStats]]:
    generator = await GlmGenerator.load(model_path, "cpu", max_batch_size=8)
    stats = ServerStats()
    try:
        async with serving(create_app(generator, MODEL, None, stats)) as url:
            config = OpenAIBackendConfig(base_url=url, model=MODEL, **{"timeout_s": 120.0, **settings})
            backend = OpenAIBackend(config, metrics)
            await backend.start()
            try:
                yield backend, generator, stats
            finally:
                await backend.close()
    finally:
        await generator.close()


def grey_sample(sample_id: str) -> SampleInput:
    image = np.full((96, 80, 3), 127, np.uint8)
    return SampleInput(
        sample_id=sample_id,
        edge_id="e1",
        camera_id="c1",
        frame_seq=0,
        captured_at=0.0,
        image=image,
        crop=None,
        frame_size=(80, 96),
        detections=(CloudDetection("cat", 1, 0.5, (0.0, 0.0, 80.0, 96.0)),),
        mined_reason="uncertainty_band",
        priority=0.5,
        trace_id="",
    )


def unparsable(metrics: CloudMetrics) -> float:
    value = metrics.registry.get_sample_value("edgeglm_cloud_backend_unparsable_answers_total", {"backend": "openai"})
    return value or 0.0


async def test_random_weights_behind_http_answer_nonsense_that_is_unsure_and_batched(random_glm: Path) -> None:
    metrics = CloudMetrics()
    async with glm_behind_http(random_glm, metrics, max_tokens=16, max_concurrency=4) as (backend, generator, stats):
        results = judgements(await backend.infer([grey_sample(f"s-{i}") for i in range(4)]))
    assert [r.decision for r in results] == ["unsure"] * 4
    assert all(r.text.startswith("unparsable answer:") for r in results)
    assert unparsable(metrics) == 4
    assert stats.by_status == {200: 4}
    assert sum(size * calls for size, calls in generator.batch_sizes.items()) == 4
    assert max(generator.batch_sizes) > 1  # concurrent requests shared a generate


async def test_a_prompt_the_model_was_not_trained_on_is_refused_and_unsure(random_glm: Path) -> None:
    metrics = CloudMetrics()
    template = "Edge: {detections}\nMined: {reason}\n{question}\nAnswer in JSON, please."
    async with glm_behind_http(random_glm, metrics, prompt_template=template) as (backend, _generator, stats):
        (result,) = await backend.infer([grey_sample("s-1")])
    assert isinstance(result, SampleFailure)  # not a judgement: judged again later
    assert "answered HTTP 400" in result.text
    assert "the world GLM answers only its trained prompt" in result.text
    assert stats.by_status == {400: 1}
    value = metrics.registry.get_sample_value(
        "edgeglm_cloud_backend_errors_total", {"backend": "openai", "kind": "http_4xx"}
    )
    assert value == 1


async def test_world_glm_verdicts_through_http_agree_with_ground_truth_as_reported() -> None:
    reported = json.loads((WORLD_GLM / "eval.json").read_text())["held_out"]["decision_accuracy"]
    cases = held_out_cases(AGREEMENT_FRAMES, seed=0, claim_seed=42)
    metrics = CloudMetrics()
    async with glm_behind_http(WORLD_GLM, metrics, max_concurrency=8, max_batch_size=64) as (backend, _gen, _stats):
        results = judgements(await backend.infer([case.sample for case in cases]))
    agree = sum(r.decision == case.truth.decision for r, case in zip(results, cases, strict=True))
    n = len(cases)
    # The reported rate less a margin: 0.05 plus two binomial standard errors at this sample count.
    bound = reported - 0.05 - 2 * math.sqrt(reported * (1 - reported) / n)
    assert n >= 15
    assert agree / n >= bound, f"{agree}/{n} agree with ground truth; the report says {reported:.3f}"
    assert {r.decision for r in results} >= {"confirmed", "rejected"}
