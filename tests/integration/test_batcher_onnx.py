"""The batcher in front of the real onnx backend: concurrent samples of real frames, batched, judged, answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
from google.protobuf.timestamp_pb2 import Timestamp

from cloud.backends import OnnxBackendConfig, build_backend
from cloud.batcher import BatcherConfig, DynamicBatcher
from cloud.convert import sample_from_pb, verdict_to_pb
from cloud.metrics import CloudMetrics
from protos import sample_pb2, verdict_pb2
from sim.world.dataset import DatasetSpec, render_dataset_image

MODEL = Path(__file__).resolve().parents[2] / "sim" / "models" / "edge.onnx"


def sample(index: int, report_truth: bool):
    """Test image `index` as an edge would send it, reporting its true objects or nothing (motion)."""
    scene = render_dataset_image(DatasetSpec(seed=0), "test", index)
    detections = [
        sample_pb2.Detection(
            label=o.label, score=0.4, box=sample_pb2.Box(x1=o.box[0], y1=o.box[1], x2=o.box[2], y2=o.box[3])
        )
        for o in scene.objects
    ]
    pb = sample_pb2.Sample(
        sample_id=f"test-{index}",
        edge_id="edge-1",
        camera_id="cam",
        captured_at=Timestamp(seconds=1_767_225_600),
        image=sample_pb2.SampleImage(jpeg=cv2.imencode(".jpg", scene.image)[1].tobytes()),
        detections=detections if report_truth else [],
        mined_reason=sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
        trace_id=f"trace-{index}",
    )
    return sample_from_pb(pb)


async def test_concurrent_samples_are_judged_in_one_batch_by_the_onnx_backend():
    metrics = CloudMetrics()
    backend = build_backend(OnnxBackendConfig(model_path=MODEL, providers=["cpu"], max_batch_size=4))
    batcher = DynamicBatcher(backend, BatcherConfig(max_batch_size=4, max_queue_delay_ms=60_000), metrics)
    await batcher.start()
    samples = [sample(0, True), sample(4, True), sample(7, True), sample(2, False)]

    replies = await asyncio.wait_for(asyncio.gather(*(batcher.submit(s, 60) for s in samples)), 60)
    verdicts = [
        verdict_to_pb(
            s,
            result,
            backend=backend.name,
            model_name=backend.model_name,
            model_version=backend.model_version,
            queue_ms=queue_ms,
            inference_ms=infer_ms,
        )
        for s, (result, queue_ms, infer_ms) in zip(samples, replies, strict=True)
    ]
    await batcher.stop()

    assert [v.decision for v in verdicts] == [verdict_pb2.DECISION_CONFIRMED] * 3 + [verdict_pb2.DECISION_REJECTED]
    assert [v.sample_id for v in verdicts] == ["test-0", "test-4", "test-7", "test-2"]
    assert {v.backend for v in verdicts} == {"onnx"}
    assert all(v.model_version.startswith("sha256:") for v in verdicts)
    assert len({v.inference_time_ms for v in verdicts}) == 1  # one batch, one inference time
    assert metrics.registry.get_sample_value("edgeglm_inference_exec_count_total", {"backend": "onnx"}) == 1
    assert metrics.registry.get_sample_value("edgeglm_inference_batch_size_sum", {"backend": "onnx"}) == 4
