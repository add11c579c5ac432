"""The cloud service judging with the committed world GLM, end to end over real gRPC (server on port 0).

Samples are held-out world crops (test-split frames, seeded edge claims) sent as the edge would,
concurrently; the batcher waits long enough for them to share a generate call.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cloud.config import CloudConfig
from cloud.convert import DECISIONS, sample_to_pb
from protos import session_pb2, verdict_pb2
from sim.glm.evaluate import EvalCase, held_out_cases
from tests.helpers.cloud import channel, counter, open_session, read, running
from tests.helpers.glm_models import WORLD_GLM, agreement_bound

# torch on every core, under deadlines sized for one model at a time (tests/conftest.py).
pytestmark = pytest.mark.one_at_a_time("glm")

CONCURRENT = 16
BATCH = 8
# CPU inference of a batch of 8 on two shared cores: seconds, not milliseconds.
INFER_TIMEOUT_S = 120.0


def glm_config(tmp_path: Path, **backend: Any) -> CloudConfig:
    return CloudConfig.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
            "backend": {"kind": "glm", "model_path": str(WORLD_GLM), "max_batch_size": BATCH, **backend},
            # A long queue delay so that concurrent requests are batched together.
            "batcher": {"max_batch_size": BATCH, "max_queue_delay_ms": 500, "default_timeout_ms": 100_000},
            "store": {"path": str(tmp_path / "state" / "verdicts.sqlite")},
            "policy": {"signing_key": str(tmp_path / "keys" / "policy-signing.key"), "create_signing_key": True},
            "admin": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def cases() -> list[EvalCase]:
    return held_out_cases(6, seed=0, claim_seed=7)[:CONCURRENT]


def jpeg_of(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return bytes(buffer.tobytes())


@pytest.mark.slow
async def test_concurrent_samples_are_batched_and_judged_as_ground_truth_says(
    tmp_path: Path, cases: list[EvalCase]
) -> None:
    assert len(cases) == CONCURRENT
    async with running(glm_config(tmp_path)) as service, channel(service) as stub:
        requests = [session_pb2.InferRequest(sample=sample_to_pb(case.sample)) for case in cases]
        verdicts = await asyncio.wait_for(
            asyncio.gather(*(stub.Infer(r, timeout=INFER_TIMEOUT_S) for r in requests)), INFER_TIMEOUT_S
        )
        batches = counter(service, "edgeglm_inference_batch_size_count", backend="glm")
        batched = counter(service, "edgeglm_inference_batch_size_sum", backend="glm")
    assert [v.sample_id for v in verdicts] == [case.sample.sample_id for case in cases]
    assert {v.origin for v in verdicts} == {verdict_pb2.VERDICT_ORIGIN_BACKEND}
    assert {v.backend for v in verdicts} == {"glm"}
    agree = sum(v.decision == DECISIONS[case.truth.decision] for v, case in zip(verdicts, cases, strict=True))
    reported = json.loads((WORLD_GLM / "eval.json").read_text())["held_out"]["decision_accuracy"]
    assert agree >= math.floor(agreement_bound(reported, len(cases)) * len(cases))
    assert batched == CONCURRENT
    assert batches < CONCURRENT, "every request ran alone: nothing was batched"
    assert batches >= CONCURRENT / BATCH


async def test_a_bad_image_and_an_unparsable_answer_are_unsure_and_the_session_goes_on(
    tmp_path: Path, cases: list[EvalCase]
) -> None:
    good = sample_to_pb(cases[0].sample)
    tiny = sample_to_pb(cases[0].sample)
    tiny.sample_id = "tiny"
    tiny.image.jpeg = jpeg_of(np.zeros((1, 1, 3), np.uint8))
    tiny.image.frame_width, tiny.image.frame_height = 1, 1
    good.edge_id = tiny.edge_id = ""  # the session's own edge
    # Eight new tokens cannot hold a verdict: the answer is cut and unparsable.
    async with running(glm_config(tmp_path, max_new_tokens=8)) as service, channel(service) as stub:
        call, _ = await open_session(stub)
        seen: dict[str, Any] = {}
        for sample in (tiny, good):
            await call.write(session_pb2.EdgeMessage(sample=sample))
            while sample.sample_id not in seen:
                message = await asyncio.wait_for(read(call), INFER_TIMEOUT_S)
                if message.WhichOneof("kind") == "ack":
                    assert message.ack.accepted, message.ack.error
                if message.WhichOneof("kind") == "verdict":
                    seen[message.verdict.sample_id] = message.verdict
        call.cancel()
        bad_images = counter(service, "edgeglm_cloud_backend_errors_total", backend="glm", kind="bad_image")
        unparsable = counter(service, "edgeglm_cloud_backend_unparsable_answers_total", backend="glm")
    assert seen["tiny"].decision == verdict_pb2.DECISION_UNSURE
    assert "1x1 pixels" in seen["tiny"].text
    assert seen[good.sample_id].decision == verdict_pb2.DECISION_UNSURE
    assert "unparsable answer" in seen[good.sample_id].text
    assert (bad_images, unparsable) == (1, 1)


async def test_after_a_bad_image_the_next_sample_is_judged(tmp_path: Path, cases: list[EvalCase]) -> None:
    good = sample_to_pb(cases[1].sample)
    tiny = sample_to_pb(cases[2].sample)
    tiny.sample_id = "tiny-2"
    tiny.image.jpeg = jpeg_of(np.zeros((2, 2, 3), np.uint8))
    tiny.image.frame_width, tiny.image.frame_height = 2, 2
    async with running(glm_config(tmp_path)) as service, channel(service) as stub:
        first = await stub.Infer(session_pb2.InferRequest(sample=tiny), timeout=INFER_TIMEOUT_S)
        second = await stub.Infer(session_pb2.InferRequest(sample=good), timeout=INFER_TIMEOUT_S)
        assert counter(service, "edgeglm_cloud_backend_errors_total", backend="glm", kind="bad_image") == 1
    assert first.decision == verdict_pb2.DECISION_UNSURE
    assert "2x2 pixels" in first.text
    assert (second.sample_id, second.origin) == (good.sample_id, verdict_pb2.VERDICT_ORIGIN_BACKEND)
    assert second.decision != verdict_pb2.DECISION_UNSURE  # judged: its answer parsed into a verdict
