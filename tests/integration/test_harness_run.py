"""`edgeglm-sim run` for real, small: cloud, mosquitto and edge agent processes over emulated links.

The netns test runs the same scenario in both link modes and checks they agree (root only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from sim.fleet.broker import mosquitto_binary
from sim.harness.scenario import run_scenario
from sim.link.emulator import netns_available
from sim.scenarios.spec import load_scenario

REQUIRED = {
    "uplink_bytes",
    "uplink_ratio",
    "event_recall",
    "event_precision",
    "verdict_latency_ms",
    "local_latency_ms",
    "round_trip_ms",
    "samples_lost",
    "samples_duplicated",
}


def _scenario(tmp_path: Path, **changes: object) -> Path:
    raw: dict[str, object] = {
        "name": "tiny",
        "description": "One gRPC edge and one MQTT edge, one camera each, a short cloud outage.",
        "seed": 4,
        "duration_s": 12,
        "edges": [
            {
                "name": "g",
                "transport": "grpc",
                "cameras": [{"fps": 4, "mean_gap_seconds": 3, "quiet_start_seconds": 1}],
                "link": {"up_kbit": 4000, "rtt_ms": 20, "jitter_ms": 4, "loss": 0.01},
            },
            {
                "name": "m",
                "transport": "mqtt",
                "cameras": [{"fps": 4, "mean_gap_seconds": 3, "quiet_start_seconds": 1}],
                "link": {"up_kbit": 4000, "rtt_ms": 20},
            },
        ],
        "cloud_outages": [{"start_s": 5, "duration_s": 3}],
        "cloud": {
            "backend": "oracle",
            "oracle_delay_ms": 60,
            "oracle_jitter_ms": 10,
            "closed_loop": {"enabled": True, "min_pairs": 5, "min_audit_pairs": 1, "min_interval_s": 1},
        },
        "policy": {"random_audit_rate": 0.2},
        "modes": ["cloud_only", "edgeglm"],
    }
    raw.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.skipif(mosquitto_binary() is None and os.environ.get("CI") != "true", reason="mosquitto not installed")
def test_a_scenario_run_writes_the_report_with_every_figure_per_mode(tmp_path: Path) -> None:
    scenario = load_scenario(_scenario(tmp_path))
    out = tmp_path / "run"
    report = run_scenario(scenario, out, Console(record=True, width=160))
    written = json.loads((out / "report.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert set(written["modes"]) == {"cloud_only", "edgeglm"}
    for mode, figures in written["modes"].items():
        assert set(figures) >= REQUIRED, mode
        assert set(figures["verdict_latency_ms"]) == {"p50", "p95", "p99"}
        assert figures["frames_read"] == figures["frames"] == 96  # 2 cameras x 12 s x 4 fps, every one read
        assert figures["samples_lost"] == 0, mode
        assert figures["samples_duplicated"] == 0, mode
    cloud, ours = written["modes"]["cloud_only"], written["modes"]["edgeglm"]
    assert cloud["samples_mined"] == 96  # cloud_only mines every frame
    assert cloud["uplink_ratio"] == 1.0
    assert 0 < ours["uplink_bytes"] < cloud["uplink_bytes"]
    assert ours["local_latency_ms"]["p50"] is not None
    assert written["link_mode"] == "inproc"
    for name in ("report.md", "bandwidth_vs_recall.png", "latency_cdf.png", "uplink_over_time.png"):
        assert (out / name).stat().st_size > 0
    assert "| edgeglm |" in (out / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.alone  # two latencies compared side by side: nothing else may load the machine meanwhile
def test_inproc_and_netns_agree_on_bytes_and_median_latency(tmp_path: Path) -> None:
    available, why = netns_available()
    if not available:
        pytest.skip(f"netns link mode unavailable here: {why}")
    # One gRPC edge, no loss and no audit: what goes up depends on the frames only, not on chance.
    path = _scenario(
        tmp_path,
        edges=[
            {
                "name": "g",
                "transport": "grpc",
                "cameras": [{"fps": 4, "mean_gap_seconds": 3, "quiet_start_seconds": 1}],
                "link": {"up_kbit": 3000, "down_kbit": 6000, "rtt_ms": 40, "jitter_ms": 0},
            }
        ],
        cloud_outages=[],
        policy={"random_audit_rate": 0.0, "resend_interval_s": 0.0},
        modes=["edgeglm"],
        cloud={"backend": "oracle", "oracle_delay_ms": 80, "oracle_jitter_ms": 0, "closed_loop": {"enabled": False}},
    )
    figures = {}
    for mode in ("inproc", "netns"):
        scenario = load_scenario(path, {"link_mode": mode})
        report = run_scenario(scenario, tmp_path / mode, Console(record=True, width=160))
        figures[mode] = report["modes"]["edgeglm"]
        assert report["link_mode"] == mode
    inproc, netns = figures["inproc"], figures["netns"]
    assert inproc["samples_sent"] > 0
    assert netns["uplink_bytes"] == pytest.approx(inproc["uplink_bytes"], rel=0.10)
    # The link is the same, so what it adds is too: the time from a send to its verdict. From capture
    # would also count the edge's own CPU, which differs between a thread here and a process in a namespace.
    assert netns["round_trip_ms"]["p50"] == pytest.approx(inproc["round_trip_ms"]["p50"], rel=0.10)
    # And it is the link that is measured: 40 ms of round trip plus the oracle's 80 ms, at least.
    assert inproc["round_trip_ms"]["p50"] >= 120
