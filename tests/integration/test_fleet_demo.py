"""The demo's fleet runner, small: real processes (cloud, mosquitto, two edges on both transports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from sim.fleet.broker import mosquitto_binary
from sim.fleet.run import FleetSpec, run_fleet


@pytest.mark.slow
def test_fleet_run_changes_the_policy_midway_and_scores_the_run(tmp_path: Path) -> None:
    console = Console(record=True, width=140)
    summary = run_fleet(tmp_path, FleetSpec(edges=2, cameras=1, seconds=10, fps=5), console)
    assert summary["frames"] == summary["frames_read"] == 100
    assert 0 < summary["uplink_bytes"] < summary["cloud_only_bytes"]
    assert {"p50", "p95"} <= set(summary["verdict_latency_ms"])
    assert 0.0 <= summary["event_recall"] <= 1.0 or summary["events"]["watched"] == 0
    # The policy set halfway reached both edges, whichever transport they use.
    assert summary["policy_versions"] == {"edge-0": 2, "edge-1": 2}
    for edge in summary["edges"].values():
        assert edge["verdicts"] == edge["samples_sent"]
        assert edge["samples_unacknowledged"] == 0
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["uplink_bytes"] == summary["uplink_bytes"]
    if mosquitto_binary() is not None:
        last_edge = yaml.safe_load((tmp_path / "config" / "edge-1.yaml").read_text())
        assert last_edge["uplink"]["kind"] == "mqtt"
    assert "policy changed midway" in console.export_text()
