"""Prometheus metrics of one cloud service instance, on a registry of its own.

Batcher metrics follow Triton's names (`nv_inference_*`) with our prefix, so dashboards built for
Triton read the same: request success/failure, queue and compute durations, batch sizes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CloudMetrics:
    """All counters, gauges and histograms of the cloud service."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # Batcher, after Triton.
        self.request_success = Counter(
            "edgeglm_inference_request_success", "Inference requests answered.", ["backend"], registry=r
        )
        self.request_failure = Counter(
            "edgeglm_inference_request_failure",
            "Inference requests failed, by reason (timeout, queue_full, backend_error, bad_input).",
            ["backend", "reason"],
            registry=r,
        )
        self.queue_duration = Histogram(
            "edgeglm_inference_queue_duration_seconds",
            "Time a request waited in the batcher queue.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "edgeglm_inference_compute_infer_duration_seconds",
            "Backend time per batch.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "edgeglm_inference_batch_size",
            "Requests per executed batch.",
            ["backend"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.queue_depth = Gauge("edgeglm_inference_queue_depth", "Requests waiting in the batcher.", registry=r)
        self.exec_count = Counter("edgeglm_inference_exec_count", "Batches executed.", ["backend"], registry=r)
        # Backends: samples a backend could not judge (they become unsure), by what went wrong.
        self.backend_errors = Counter(
            "edgeglm_cloud_backend_errors",
            "Samples a backend answered unsure because of an error (timeout, connection, http_5xx, auth, ...).",
            ["backend", "kind"],
            registry=r,
        )
        self.backend_unparsable = Counter(
            "edgeglm_cloud_backend_unparsable_answers",
            "Model answers with no valid JSON verdict in them (the sample becomes unsure).",
            ["backend"],
            registry=r,
        )
        # Ingest and sessions.
        self.samples_received = Counter(
            "edgeglm_cloud_samples_received", "Samples received, by transport.", ["transport"], registry=r
        )
        self.samples_duplicate = Counter(
            "edgeglm_cloud_samples_duplicate", "Samples received again (answered from the store).", registry=r
        )
        self.samples_deferred = Counter(
            "edgeglm_cloud_samples_deferred",
            "Samples not judged now, the edge told to send them again, by reason (overloaded, timeout, "
            "backend_error, store_error, shutting_down, claim_lapsed).",
            ["reason"],
            registry=r,
        )
        self.samples_judged_elsewhere = Counter(
            "edgeglm_cloud_samples_judged_elsewhere",
            "Samples another replica was judging when they reached this one (a shared store): this one waited for "
            "that verdict instead of judging them again.",
            registry=r,
        )
        self.admin_refused = Counter(
            "edgeglm_cloud_admin_refused",
            "Admin API requests refused, by reason (no_token, wrong_token, viewer_change, not_admin, session_change, "
            "rate_limited, wrong_sign_in).",
            ["reason"],
            registry=r,
        )
        self.dataset_records = Counter(
            "edgeglm_cloud_dataset_records",
            "Verdicts offered to the field dataset, by outcome (kept, near_duplicate, duplicate, not_decided, "
            "dropped_busy, failed).",
            ["outcome"],
            registry=r,
        )
        self.dataset_removed = Counter(
            "edgeglm_cloud_dataset_removed",
            "Field dataset records removed, by reason (retention, size_cap).",
            ["reason"],
            registry=r,
        )
        self.dataset_bytes = Gauge("edgeglm_cloud_dataset_bytes", "Bytes of the field dataset's images.", registry=r)
        self.task_failures = Counter(
            "edgeglm_cloud_task_failures", "Background tasks that failed, by task.", ["task"], registry=r
        )
        self.bad_messages = Counter(
            "edgeglm_cloud_bad_messages",
            "Messages refused, by reason (oversized, malformed, undecodable, unknown_edge, impostor, bad_image, "
            "no_hello).",
            ["reason"],
            registry=r,
        )
        self.model_fetches = Counter(
            "edgeglm_cloud_model_fetches",
            "FetchModel calls, by outcome (served, resumed, not_found, no_registry, out_of_range, cut).",
            ["outcome"],
            registry=r,
        )
        self.model_bytes_served = Counter(
            "edgeglm_cloud_model_bytes_served", "Bytes of model files sent to edges.", registry=r
        )
        self.verdicts_sent = Counter(
            "edgeglm_cloud_verdicts_sent", "Verdicts sent, by decision.", ["decision"], registry=r
        )
        self.rule_answers = Counter(
            "edgeglm_cloud_rule_answers",
            "Watch rules answered in verdicts, by answer (matched, not_matched, unsure, not_in_policy).",
            ["answer"],
            registry=r,
        )
        self.sessions_open = Gauge("edgeglm_cloud_sessions_open", "Edge sessions currently connected.", registry=r)
        self.uplink_bytes = Counter("edgeglm_cloud_uplink_bytes", "Sample bytes received from edges.", registry=r)
        self.policies_published = Counter(
            "edgeglm_cloud_policies_published", "Policy versions published.", ["scope"], registry=r
        )
        self.policies_rejected = Counter(
            "edgeglm_cloud_policies_rejected", "Policy updates refused as invalid.", registry=r
        )
