"""Helpers for backend tests."""

from __future__ import annotations

from collections.abc import Sequence

from cloud.convert import BackendResult, SampleFailure
from cloud.metrics import CloudMetrics


def judgements(results: Sequence[BackendResult | SampleFailure]) -> list[BackendResult]:
    """`results` when every one is a judgement; fails naming the first failure otherwise."""
    failures = [r for r in results if isinstance(r, SampleFailure)]
    assert not failures, f"{len(failures)} samples not judged, e.g. {failures[0]}"
    return [r for r in results if isinstance(r, BackendResult)]


def backend_errors(metrics: CloudMetrics, kind: str, backend: str = "openai") -> float:
    """edgeglm_cloud_backend_errors_total of one backend and kind (0 before the first)."""
    value = metrics.registry.get_sample_value("edgeglm_cloud_backend_errors_total", {"backend": backend, "kind": kind})
    return value or 0.0


def unparsable_answers(metrics: CloudMetrics, backend: str = "openai") -> float:
    """edgeglm_cloud_backend_unparsable_answers_total of one backend (0 before the first)."""
    value = metrics.registry.get_sample_value("edgeglm_cloud_backend_unparsable_answers_total", {"backend": backend})
    return value or 0.0
