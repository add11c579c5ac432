"""Helpers for backend tests."""

from __future__ import annotations

from collections.abc import Sequence

from cloud.convert import BackendResult, SampleFailure


def judgements(results: Sequence[BackendResult | SampleFailure]) -> list[BackendResult]:
    """`results` when every one is a judgement; fails naming the first failure otherwise."""
    failures = [r for r in results if isinstance(r, SampleFailure)]
    assert not failures, f"{len(failures)} samples not judged, e.g. {failures[0]}"
    return [r for r in results if isinstance(r, BackendResult)]
