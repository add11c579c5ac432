"""The openai backend against `transformers serve`, a server nobody here wrote, serving the world GLM.

`transformers serve` builds a Glm4vProcessor, which needs torchvision: it runs from the training
environment (`.venv-train`, ~6 GB, `make .venv-train/.ready`), which `make test` does not build, so
this test runs where that environment is and is skipped (saying so) where it is not, CI included.
The server renders the folder's own chat template and resizes images its own way; the backend must
get a valid verdict for every sample, mostly the in-process backend's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.openai import start_transformers_serve
from cloud.backends import GlmBackend, GlmBackendConfig, OpenAIBackend, OpenAIBackendConfig
from cloud.metrics import CloudMetrics
from sim.glm.evaluate import held_out_cases
from tests.helpers.backends import judgements, unparsable_answers
from tests.helpers.glm_models import WORLD_GLM

REPO = Path(__file__).resolve().parents[2]
TRANSFORMERS = REPO / ".venv-train" / "bin" / "transformers"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve` on a free loopback port, the world GLM preloaded; its /v1 URL."""
    if not TRANSFORMERS.is_file():
        pytest.skip(f"{TRANSFORMERS} is not there: transformers serve needs torchvision (make .venv-train/.ready)")
    log = tmp_path_factory.mktemp("serve") / "transformers-serve.log"
    process, url = start_transformers_serve(TRANSFORMERS, WORLD_GLM, log)  # bench.openai's: one way to start it
    try:
        yield url
    finally:
        process.terminate()
        process.wait(30)


async def test_transformers_serve_gives_a_valid_verdict_for_every_world_crop(served: str) -> None:
    cases = held_out_cases(3, seed=0, claim_seed=7)
    metrics = CloudMetrics()
    config = OpenAIBackendConfig(base_url=served, model=str(WORLD_GLM), timeout_s=120, max_concurrency=4)
    remote = OpenAIBackend(config, metrics)
    local = GlmBackend(GlmBackendConfig(model_path=WORLD_GLM))
    await remote.start()
    await local.start()
    try:
        over_http = judgements(await remote.infer([case.sample for case in cases]))
        in_process = judgements(await local.infer([case.sample for case in cases]))
    finally:
        await remote.close()
        await local.close()
    assert unparsable_answers(metrics) == 0, [r.text for r in over_http if r.decision == "unsure"]
    assert all(r.decision in ("confirmed", "rejected") for r in over_http)
    same = sum(a.decision == b.decision for a, b in zip(over_http, in_process, strict=True))
    assert same >= 0.75 * len(cases), f"{same} of {len(cases)} decisions as the in-process backend's"
