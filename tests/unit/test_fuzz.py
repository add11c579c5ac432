"""A short pass of bench/fuzz.py's targets: every decoder the outside world reaches, on generated input.

`make fuzz` runs the long pass (10,000 cases per target). Here each target runs a few hundred cases,
derandomised so a failure reproduces; a failure names the error and the first input that caused it.
"""

from __future__ import annotations

import pytest

from bench.fuzz import TARGETS, run_target

SHORT = 150


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_decoder_only_refuses_with_its_own_error(name: str) -> None:
    figures = run_target(name, SHORT)
    assert figures["cases"] >= SHORT // 2, "hypothesis ran too few cases to mean anything"
    assert figures["distinct_errors"] == {}


def test_the_fuzzer_finds_a_decoder_that_breaks_its_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: a target whose decoder raises something else is reported, with its input."""
    strategy, _ = TARGETS["jpeg_bytes"]

    def broken(data: bytes) -> None:
        if len(data) > 10:
            raise KeyError("a decoder that crashes")

    monkeypatch.setitem(TARGETS, "jpeg_bytes", (strategy, broken))
    figures = run_target("jpeg_bytes", 20)
    assert figures["failures"] == 1 and "KeyError: 'a decoder that crashes'" in next(iter(figures["distinct_errors"]))
