"""The edge's status heartbeat (EdgeStatus), built from the agent's metrics and camera states."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Histogram

from edge.metrics import EdgeMetrics
from protos import status_pb2

EDGE_STATES = {
    "online": status_pb2.EDGE_STATE_ONLINE,
    "autonomous": status_pb2.EDGE_STATE_AUTONOMOUS,
    "draining": status_pb2.EDGE_STATE_DRAINING,
    "degraded": status_pb2.EDGE_STATE_DEGRADED,
    "starting": status_pb2.EDGE_STATE_UNSPECIFIED,
}
CAMERA_STATES = {
    "streaming": status_pb2.CAMERA_STATE_STREAMING,
    "connecting": status_pb2.CAMERA_STATE_RECONNECTING,
    "stalled": status_pb2.CAMERA_STATE_RECONNECTING,
    "reconnecting": status_pb2.CAMERA_STATE_RECONNECTING,
    "ended": status_pb2.CAMERA_STATE_ENDED,
    "failed": status_pb2.CAMERA_STATE_FAILED,
}


class CameraLike(Protocol):
    """What the status needs of a camera source."""

    @property
    def state(self) -> str: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def camera_id(self) -> str: ...


def counter_total(counter: Counter) -> float:
    """Sum of a (possibly labelled) counter over all its label values."""
    return sum(
        sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total")
    )


def histogram_sum(histogram: Histogram) -> float:
    """Sum of the observations of a (possibly labelled) histogram."""
    return sum(
        sample.value for metric in histogram.collect() for sample in metric.samples if sample.name.endswith("_sum")
    )


def timestamp(seconds: float) -> Timestamp:
    """A protobuf Timestamp from unix seconds."""
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class StatusBuilder:
    """Builds heartbeats for one edge."""

    def __init__(self, edge_id: str, site_id: str, metrics: EdgeMetrics) -> None:
        self._edge_id = edge_id
        self._site_id = site_id
        self._metrics = metrics
        self._started_at = time.time()

    def build(
        self,
        *,
        state: str,
        policy_version: int,
        model: tuple[str, str],
        outbox_samples: int,
        cameras: Sequence[CameraLike],
    ) -> status_pb2.EdgeStatus:
        """The current status as the wire message; `model` is (name, version) of the one running."""
        model_name, model_version = model
        m = self._metrics
        return status_pb2.EdgeStatus(
            edge_id=self._edge_id,
            site_id=self._site_id,
            reported_at=timestamp(time.time()),
            started_at=timestamp(self._started_at),
            state=EDGE_STATES.get(state, status_pb2.EDGE_STATE_UNSPECIFIED),
            model_name=model_name,
            model_version=model_version,
            policy_version=policy_version,
            outbox_samples=outbox_samples,
            counters=status_pb2.EdgeCounters(
                frames_read=int(counter_total(m.frames_read)),
                frames_skipped_by_gate=int(counter_total(m.frames_gated)),
                samples_mined=int(counter_total(m.mined)),
                samples_sent=int(counter_total(m.samples_sent)),
                bytes_sent=int(counter_total(m.uplink_bytes)),
                frames_detected=int(counter_total(m.frames_detected)),
                detections=int(counter_total(m.detections)),
                detect_seconds=histogram_sum(m.detect_seconds),
                task_failures=int(counter_total(m.task_failures)),
            ),
            cameras=[
                status_pb2.CameraStatus(
                    camera_id=camera.camera_id,
                    state=CAMERA_STATES.get(camera.state, status_pb2.CAMERA_STATE_UNSPECIFIED),
                    last_error=camera.last_error or "",
                )
                for camera in cameras
            ],
        )


def run_summary(
    metrics: EdgeMetrics,
    edge_id: str,
    *,
    policy_version: int,
    samples_unacknowledged: int,
    verdicts_unmatched: int,
    latencies_ms: dict[str, list[float]],
) -> dict[str, object]:
    """What one run of the agent did (its summary.json): counters, and the latencies it kept."""
    m = metrics
    return {
        "edge_id": edge_id,
        "frames_read": counter_total(m.frames_read),
        "frames_gated": counter_total(m.frames_gated),
        "frames_detected": counter_total(m.frames_detected),
        "frames_dropped": counter_total(m.frames_dropped),
        "samples_mined": counter_total(m.mined),
        "mined_by_reason": {
            sample.labels["reason"]: sample.value
            for metric in m.mined.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        },
        "samples_sent": counter_total(m.samples_sent),
        "uplink_bytes": counter_total(m.uplink_bytes),
        "verdicts": counter_total(m.verdicts),
        "samples_unacknowledged": samples_unacknowledged,
        "policy_version": policy_version,
        "verdicts_unmatched": verdicts_unmatched,
        **latencies_ms,
    }
