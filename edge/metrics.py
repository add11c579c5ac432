"""Prometheus metrics of one edge agent, on a registry of its own.

A registry per agent (not the process-global one) lets tests run several agents in one process and
lets /metrics show exactly this agent. Every component receives the `EdgeMetrics` it reports to.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EdgeMetrics:
    """All counters, gauges and histograms of the edge agent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames_read = Counter("edgeglm_edge_frames_read", "Frames read from cameras.", ["camera"], registry=r)
        self.frames_dropped = Counter(
            "edgeglm_edge_frames_dropped",
            "Frames dropped before detection (queue_full, detect_queue_full: inference lagged; fps_cap: above the "
            "camera's cap; shutdown: read as the agent stopped, cut before detection).",
            ["camera", "reason"],
            registry=r,
        )
        self.bad_frames = Counter(
            "edgeglm_edge_bad_frames", "Frames that could not be decoded or were malformed.", ["camera"], registry=r
        )
        self.camera_reconnects = Counter(
            "edgeglm_edge_camera_reconnects", "Camera reconnect attempts by the watchdog.", ["camera"], registry=r
        )
        self.camera_up = Gauge("edgeglm_edge_camera_up", "1 while the camera delivers frames.", ["camera"], registry=r)
        self.frames_gated = Counter(
            "edgeglm_edge_frames_gated", "Frames skipped by the gate (nothing changed).", ["camera"], registry=r
        )
        self.frames_detected = Counter(
            "edgeglm_edge_frames_detected", "Frames the detector ran on.", ["camera"], registry=r
        )
        self.detections = Counter(
            "edgeglm_edge_detections",
            "Detections the detector returned (above its confidence threshold), by camera.",
            ["camera"],
            registry=r,
        )
        self.detect_seconds = Histogram(
            "edgeglm_edge_detect_seconds",
            "Detector time per batch (preprocess, inference, decode).",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.mined = Counter("edgeglm_edge_mined", "Frames judged suspicious, by reason.", ["reason"], registry=r)
        self.local_events = Counter(
            "edgeglm_edge_local_events",
            "Events of tracked objects (type new, update, end), by label.",
            ["label", "type"],
            registry=r,
        )
        self.events_unpublished = Counter(
            "edgeglm_edge_events_unpublished",
            "Local events not published on MQTT because the broker was away (they stay in the events file).",
            registry=r,
        )
        self.decisions_without_cloud = Counter(
            "edgeglm_edge_decisions_without_cloud",
            "Frames decided while the cloud was unreachable (the edge result was used alone).",
            registry=r,
        )
        self.samples_sent = Counter("edgeglm_edge_samples_sent", "Samples sent to the cloud.", registry=r)
        self.samples_dropped = Counter(
            "edgeglm_edge_samples_dropped", "Samples dropped before sending, by reason.", ["reason"], registry=r
        )
        self.samples_deferred = Counter(
            "edgeglm_edge_samples_deferred",
            "Samples the cloud (or the broker) did not take now, kept and sent again later, by reason.",
            ["reason"],
            registry=r,
        )
        self.samples_resent = Counter(
            "edgeglm_edge_samples_resent",
            "Samples sent again (cloud back, no ack or no verdict in time, deferred), by reason.",
            ["reason"],
            registry=r,
        )
        self.outbox_errors = Counter(
            "edgeglm_edge_outbox_errors", "Outbox reads or writes that failed (e.g. a full disk).", registry=r
        )
        self.task_failures = Counter(
            "edgeglm_edge_task_failures",
            "Background tasks that failed and were restarted, by task.",
            ["task"],
            registry=r,
        )
        self.samples_in_flight = Gauge(
            "edgeglm_edge_samples_in_flight", "Samples sent whose verdict has not come yet.", registry=r
        )
        self.uplink_bytes = Counter("edgeglm_edge_uplink_bytes", "Bytes of samples sent to the cloud.", registry=r)
        self.acks = Counter("edgeglm_edge_acks", "Acks received, by outcome.", ["outcome"], registry=r)
        self.verdicts = Counter("edgeglm_edge_verdicts", "Verdicts received, by decision.", ["decision"], registry=r)
        self.verdict_latency = Histogram(
            "edgeglm_edge_verdict_latency_seconds",
            "From frame capture to the verdict's arrival.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.cloud_round_trip = Histogram(
            "edgeglm_edge_cloud_round_trip_seconds",
            "From a sample's last send to its verdict: the link and the cloud, without the edge's own wait.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.policy_version = Gauge("edgeglm_edge_policy_version", "Version of the policy in force.", registry=r)
        self.policies_applied = Counter("edgeglm_edge_policies_applied", "Policies applied.", registry=r)
        self.policies_rejected = Counter(
            "edgeglm_edge_policies_rejected",
            "Policies refused, by reason (signature, invalid, scope, stale, expired).",
            ["reason"],
            registry=r,
        )
        self.model_updates = Counter(
            "edgeglm_edge_model_updates",
            "Model updates by outcome: swapped, rolled_back, download_failed, or why the file was refused "
            "(size, hash, manifest, signature, not_detector, classes, input, self_test, latency, unsupported_uri, "
            "not_published).",
            ["outcome"],
            registry=r,
        )
        self.model_download_bytes = Counter(
            "edgeglm_edge_model_download_bytes", "Bytes of model files fetched from the cloud.", registry=r
        )
        self.model_download_seconds = Gauge(
            "edgeglm_edge_model_download_seconds",
            "Last model download's time, over all its attempts' transfer (0 for a file kept on disk).",
            registry=r,
        )
        self.model_swap_seconds = Gauge(
            "edgeglm_edge_model_swap_seconds",
            "Last update's time from the start of its download (or its file on disk) to the new model running.",
            registry=r,
        )
        self.uplink_connected = Gauge("edgeglm_edge_uplink_connected", "1 while the cloud session is up.", registry=r)
        self.uplink_reconnects = Counter("edgeglm_edge_uplink_reconnects", "Cloud session (re)connects.", registry=r)
