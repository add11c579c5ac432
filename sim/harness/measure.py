"""The figures of one mode, measured against the clips' ground truth.

- Object recall, event precision and per-object F1, as `sim.eval.events` defines them: the edges'
  events are folded into one record per tracked object; an object of the world is recalled when a
  track of its camera reported its label with a box overlapping its own (IoU >= 0.3) on the frame of
  one of the track's events; a track no object explains is a false alarm; a track the cloud
  rejected is withdrawn and counts as neither. `watched_recall` is recall over watched labels only.
- Uplink bytes: what crossed the emulated links edge -> cloud, protocol overhead and heartbeats
  included, counted by the link emulator (the same counter in inproc and netns mode).
- Samples lost: mined and neither received by the cloud (its idempotency records) nor still waiting
  in the edge's durable outbox at the end (`samples_backlog`, not lost: it goes up when the link
  allows). Duplicated: verdicts an edge received for a sample it was not waiting for.
- Cost per 1,000 frames: the cloud's model-seconds at the price of a GPU-hour plus the uplink bytes
  at the price of a GB.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sim.fleet.summary import CameraRun, read_jsonl, score_events
from sim.harness.run import ModeRun
from sim.scenarios.spec import Scenario


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 (None without values)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


def accuracy(cameras: list[CameraRun], mode_folder: Path) -> dict[str, Any]:
    """Object recall (all objects and watched ones), event precision and F1 of one mode."""
    events = {edge: read_jsonl(mode_folder / "edges" / edge / "events.jsonl") for edge in {c.edge_id for c in cameras}}
    score = score_events(cameras, events)
    return {
        "event_recall": score.recall,
        "watched_recall": score.watched_recall,
        "event_precision": score.precision,
        "event_f1": score.f1,
        "objects": score.objects,
        "objects_recalled": score.recalled,
        "event_records": score.tracks,
        "tracks_withdrawn": score.withdrawn_tracks,
    }


def measure_mode(run: ModeRun, cameras: list[CameraRun], scenario: Scenario, frames: int) -> dict[str, Any]:
    """Every figure the report shows for one mode (uplink_ratio is filled in against cloud_only later)."""
    summaries = run.edge_summaries.values()
    verdict_ms = [v for s in summaries for v in s.get("verdict_latency_ms", [])]
    local_ms = [v for s in summaries for v in s.get("local_latency_ms", [])]
    round_trip_ms = [v for s in summaries for v in s.get("round_trip_ms", [])]
    mined = sum(int(s["samples_mined"]) for s in summaries)
    backlog = sum(int(s.get("samples_unacknowledged", 0)) for s in summaries)
    received = sum(run.cloud_received.get(edge, 0) for edge in run.edge_summaries)
    wire_up = sum(int(s["bytes_up"]) for s in run.link_stats.values())
    wire_down = sum(int(s["bytes_down"]) for s in run.link_stats.values())
    model_seconds = run.cloud_metrics.get("model_seconds", 0.0)
    cost = (model_seconds / 3600 * scenario.cost.gpu_hour_usd + wire_up / 1e9 * scenario.cost.uplink_gb_usd) / max(
        frames, 1
    )
    return {
        "frames": frames,
        "frames_read": sum(int(s["frames_read"]) for s in summaries),
        "frames_detected": sum(int(s["frames_detected"]) for s in summaries),
        "samples_sent": sum(int(s["samples_sent"]) for s in summaries),
        "samples_mined": mined,
        "mined_by_reason": _sum_dicts(s.get("mined_by_reason", {}) for s in summaries),
        "samples_received_by_cloud": received,
        "samples_backlog": backlog,
        "samples_lost": max(0, mined - received - backlog),
        "samples_duplicated": sum(int(s.get("verdicts_unmatched", 0)) for s in summaries),
        "verdicts": sum(int(s["verdicts"]) for s in summaries),
        "uplink_bytes": wire_up,
        "downlink_bytes": wire_down,
        "sample_payload_bytes": sum(int(s["uplink_bytes"]) for s in summaries),
        "uplink_ratio": None,
        **accuracy(cameras, run.folder),
        "verdict_latency_ms": percentiles(verdict_ms),
        "local_latency_ms": percentiles(local_ms),
        "round_trip_ms": percentiles(round_trip_ms),
        "cloud_model_seconds": round(model_seconds, 3),
        "cloud_batches": int(run.cloud_metrics.get("batches", 0)),
        "cost_per_1000_frames_usd": round(cost * 1000, 5),
        "policy_versions": {e: s.get("policy_version") for e, s in run.edge_summaries.items()},
        "wall_s": round(run.wall_s, 1),
    }


def _sum_dicts(dicts: Iterable[dict[str, float]]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for d in dicts:
        for key, value in d.items():
            total[key] += int(value)
    return dict(total)


def fill_ratios(modes: dict[str, dict[str, Any]], estimate_bytes: int | None) -> str:
    """Set each mode's uplink_ratio against cloud_only's measured bytes (or the estimate); returns the basis."""
    basis_bytes = modes["cloud_only"]["uplink_bytes"] if "cloud_only" in modes else estimate_bytes
    basis = "cloud_only measured" if "cloud_only" in modes else "every frame as a JPEG (estimate; cloud_only not run)"
    for figures in modes.values():
        figures["uplink_ratio"] = round(figures["uplink_bytes"] / basis_bytes, 5) if basis_bytes else None
    return basis
