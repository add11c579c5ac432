"""The delivery benchmark runs both contracts on both transports and reports (never asserting speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.delivery import app
from tests.helpers.broker import require_mosquitto


@pytest.mark.slow
def test_delivery_benchmark_reports_both_contracts_on_both_transports(tmp_path: Path) -> None:
    require_mosquitto()
    out = tmp_path / "delivery.json"
    result = CliRunner().invoke(app, ["--out", str(out), "--rounds", "1", "--seconds", "3"])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())["figures"]
    for key in ("grpc/verdict", "grpc/ack", "mqtt/verdict", "mqtt/ack"):
        assert figures[key]["samples_per_s"] > 0
        assert figures[key]["lost"] == [0.0], key  # no fault injected: both contracts deliver everything
    assert figures["grpc/ratio_verdict_to_ack"] > 0
