"""A real cloud service with `backend: {kind: openai}` judging gRPC samples through a real OpenAI-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from cloud.backends import OpenAIBackendConfig
from protos import sample_pb2, session_pb2, verdict_pb2
from sim.openai_server import ChatInput, Reply, ScriptedGenerator, ServerStats, create_app, serving
from tests.helpers.cloud import WAIT_S, busy_frames, channel, counter, make_config, running
from tests.helpers.cloud import make_sample as frame_sample

CONFIRMED = {"decision": "confirmed", "labels": [], "confidence": 0.88, "description": "it is there"}


async def test_the_service_judges_through_the_endpoint_and_its_failures_are_not_verdicts(
    tmp_path: Path, clip: Path
) -> None:
    def script(chat: ChatInput) -> Reply:  # both prompts read alike: the image size tells the samples apart
        assert chat.image is not None
        return Reply(status=500) if chat.image.shape[1] < 100 else Reply(text=json.dumps(CONFIRMED))

    stats = ServerStats()
    frames = busy_frames(clip)
    whole = frame_sample(clip, frames[0], "s-ok")
    broken = frame_sample(clip, frames[1], "s-500")
    small = cv2.imencode(".jpg", np.zeros((40, 60, 3), np.uint8))[1].tobytes()
    broken.image.jpeg = small
    broken.image.crop.CopyFrom(sample_pb2.CropBox(x1=0, y1=0, x2=60, y2=40))  # a small crop: the script fails it
    async with serving(create_app(ScriptedGenerator(script), "glm", None, stats)) as url:
        backend = OpenAIBackendConfig(base_url=url, model="glm", max_retries=1, retry_backoff_s=0.01, timeout_s=10)
        config = make_config(tmp_path, clip).model_copy(update={"backend": backend})
        async with running(config) as service, channel(service) as stub:
            good = await stub.Infer(session_pb2.InferRequest(sample=whole, timeout_ms=10_000), timeout=WAIT_S)
            bad = await stub.Infer(session_pb2.InferRequest(sample=broken, timeout_ms=10_000), timeout=WAIT_S)
            errors = counter(service, "edgeglm_cloud_backend_errors_total", backend="openai", kind="http_5xx")
            stored_bad = await service.store.get("s-500", broken.edge_id)
    assert (good.decision, good.backend, good.text) == (verdict_pb2.DECISION_CONFIRMED, "openai", "it is there")
    assert {d.label for d in good.detections} == {d.label for d in whole.detections}
    # Not a judgement: the unary caller hears why, nothing is stored, a resend is judged again.
    assert (bad.decision, bad.origin) == (verdict_pb2.DECISION_UNSURE, verdict_pb2.VERDICT_ORIGIN_BACKEND_ERROR)
    assert "answered HTTP 500" in bad.origin_detail
    assert stored_bad is None
    assert errors == 1
    assert stats.by_status == {200: 1, 500: 2}
