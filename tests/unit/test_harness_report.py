"""The harness's figures and report on a hand-made run whose right answers are known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.fleet.summary import CameraRun
from sim.harness.measure import accuracy, fill_ratios, measure_mode, percentiles
from sim.harness.report import band_series, rule_series, targets, verdict, write_report
from sim.harness.run import ModeRun
from sim.scenarios.spec import SCENARIOS_DIR, load_scenario


def _clip(folder: Path) -> Path:
    """Frames 0-9: a person in 2-5 at the top left, a cat in 6-8 at the bottom right; the person is watched."""
    folder.mkdir(parents=True)
    lines = []
    for frame in range(10):
        objects = []
        if 2 <= frame <= 5:
            objects.append({"track": 0, "label": "person", "class_id": 0, "box": [0, 0, 10, 10]})
        if 6 <= frame <= 8:
            objects.append({"track": 1, "label": "cat", "class_id": 3, "box": [50, 50, 60, 60]})
        lines.append(json.dumps({"frame": frame, "objects": objects}))
    (folder / "gt.jsonl").write_text("\n".join(lines) + "\n")
    events = [
        {"track": 0, "label": "person", "watched": True, "start_frame": 2, "end_frame": 5},
        {"track": 1, "label": "cat", "watched": False, "start_frame": 6, "end_frame": 8},
    ]
    (folder / "events.json").write_text(json.dumps(events))
    return folder


CAT_BOX = [50.0, 50.0, 60.0, 60.0]
Record = tuple[str, str, int] | tuple[str, str, int, list[float]] | tuple[str, str, int, list[float], str]


def _events(folder: Path, edge: str, records: list[Record]) -> None:
    """(track, label, frame[, box[, verdict]]) as schema-1 events; a track's first record is its new."""
    (folder / "edges" / edge).mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    lines = []
    for track, label, frame, *rest in records:
        box = rest[0] if rest else [0.0, 0.0, 10.0, 10.0]
        verdict = rest[1] if len(rest) > 1 else None
        kind = "update" if track in seen else "new"
        seen.add(track)
        event = {"schema": 1, "type": kind, "id": f"{edge}/cam0/{track}", "camera": "cam0", "label": label}
        lines.append(json.dumps({**event, "frame_seq": frame, "box": box, "verdict": verdict}))
    (folder / "edges" / edge / "events.jsonl").write_text("\n".join(lines) + "\n")


def test_recall_and_precision_count_tracked_objects_against_ground_truth(tmp_path: Path) -> None:
    camera = CameraRun("e-0", "cam0", _clip(tmp_path / "clip"))
    mode = tmp_path / "mode"
    # Track 1 is the person (frames 3 and 4: one object, not two); track 2 a cat where none is (a
    # false alarm); track 3 says cat on the right frame but in the wrong place (no match, a false alarm).
    _events(mode, "e-0", [("1", "person", 3), ("2", "cat", 1), ("1", "person", 4), ("3", "cat", 7)])
    figures = accuracy([camera], mode)
    assert figures["event_recall"] == pytest.approx(0.5)
    assert figures["watched_recall"] == pytest.approx(1.0)
    assert figures["event_records"] == 3
    assert figures["event_precision"] == pytest.approx(1 / 3)
    assert figures["event_f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_a_track_the_cloud_rejected_is_withdrawn_and_a_relabelled_one_counts_with_its_final_label(
    tmp_path: Path,
) -> None:
    camera = CameraRun("e-0", "cam0", _clip(tmp_path / "clip"))
    mode = tmp_path / "mode"
    cat_box = [50.0, 50.0, 60.0, 60.0]
    # Track 1: announced as a person where nothing is, then rejected: withdrawn. Track 2: the edge said
    # person on the cat, the cloud's update relabels it cat: it explains the cat.
    _events(
        mode,
        "e-0",
        [
            ("1", "person", 0),
            ("1", "person", 0, [0.0, 0.0, 10.0, 10.0], "rejected"),
            ("2", "person", 7, cat_box),
            ("2", "cat", 7, cat_box, "confirmed"),
        ],
    )
    figures = accuracy([camera], mode)
    assert figures["tracks_withdrawn"] == 1
    assert figures["event_records"] == 1
    assert figures["event_precision"] == pytest.approx(1.0)
    assert figures["objects_recalled"] == 1


def test_percentiles_and_ratios() -> None:
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    assert percentiles([float(v) for v in range(1, 101)])["p50"] == pytest.approx(50.5)
    modes: dict[str, dict[str, Any]] = {"cloud_only": {"uplink_bytes": 1000}, "edgeglm": {"uplink_bytes": 40}}
    assert fill_ratios(modes, 5000) == "cloud_only measured"
    assert modes["edgeglm"]["uplink_ratio"] == pytest.approx(0.04)
    only: dict[str, dict[str, Any]] = {"edgeglm": {"uplink_bytes": 50}}
    assert "estimate" in fill_ratios(only, 5000)
    assert only["edgeglm"]["uplink_ratio"] == pytest.approx(0.01)


LOOP_STATE: dict[str, Any] = {
    "edges": {
        "e-0": {"person": {"band": {"low": 0.4, "high": 0.7}, "last_evaluation": {"why": "held: 31 of 40 pairs"}}}
    },
    "rules": {
        "e-0": {"cam0": {"watch_reask_interval_s": {"value": 20.0, "last_evaluation": {"why": "5 of 8 re-asks"}}}}
    },
}


def _run(tmp_path: Path, mode: str, sent: int, up: int, records: list[Record]) -> ModeRun:
    folder = tmp_path / "modes" / mode
    _events(folder, "e-0", records)
    summary = {
        "frames_read": 10,
        "frames_detected": 10,
        "samples_sent": sent,
        "samples_mined": sent + 1,
        "mined_by_reason": {"uncertainty_band": sent + 1},
        "samples_unacknowledged": 1,
        "verdicts": sent,
        "verdicts_unmatched": 0,
        "uplink_bytes": up - 100,
        "policy_version": 3,
        "verdict_latency_ms": [100.0 + i for i in range(sent)],
        "local_latency_ms": [5.0] * 10,
    }
    stats = {"bytes_up": up, "bytes_down": 10, "up_series_bytes": [up // 2, up // 2], "down_series_bytes": [5, 5]}
    history = [
        {"t": 0.0, "policies": {"fleet": {"settings": {"mining": {"default_band": {"low": 0.25, "high": 0.6}}}}}},
        {
            "t": 2.0,
            "policies": {
                "fleet": {"settings": {"mining": {"default_band": {"low": 0.25, "high": 0.6}}}},
                "edges": {
                    "e-0": {
                        "settings": {
                            "mining": {
                                "bands": {"person": {"low": 0.4, "high": 0.7}},
                                "cameras": {"cam0": {"random_audit_rate": 0.04, "motion_min_area_fraction": None}},
                            }
                        }
                    }
                },
            },
        },
    ]
    moves = [
        {"t": 2.0, "version": 4, "edge": "e-0", "reason": "closed loop: cam0 random_audit_rate: contradicted 8 of 40"}
    ]
    return ModeRun(
        mode=mode,  # type: ignore[arg-type]
        folder=folder,
        wall_s=12.0,
        edge_summaries={"e-0": summary},
        link_stats={"e-0": stats},
        cloud_metrics={"model_seconds": 3.6},
        cloud_received={"e-0": sent},
        band_history=history if mode == "edgeglm" else [],
        loop_moves=moves if mode == "edgeglm" else [],
        loop_state=LOOP_STATE if mode == "edgeglm" else {},
    )


def test_report_files_table_and_verdict(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIOS_DIR / "demo.yaml")
    camera = CameraRun("e-0", "cam0", _clip(tmp_path / "clip"))
    runs = {
        "cloud_only": _run(tmp_path, "cloud_only", 10, 100_000, [("1", "person", 3), ("2", "cat", 7, CAT_BOX)]),
        "sedna_ibt": _run(tmp_path, "sedna_ibt", 3, 9_000, [("1", "person", 3)]),
        "edgeglm": _run(tmp_path, "edgeglm", 2, 4_000, [("1", "person", 3), ("2", "cat", 7, CAT_BOX)]),
    }
    figures = {mode: measure_mode(run, [camera], scenario, frames=10) for mode, run in runs.items()}
    assert figures["edgeglm"]["samples_lost"] == 0  # mined 3 = received 2 + 1 still in the outbox
    assert figures["edgeglm"]["cloud_model_seconds"] == pytest.approx(3.6)
    # 3.6 model-seconds at 2.5 $/GPU-hour plus 4 kB at 0.5 $/GB, over 10 frames, per 1,000 frames.
    expected = (3.6 / 3600 * 2.5 + 4_000 / 1e9 * 0.5) / 10 * 1000
    assert figures["edgeglm"]["cost_per_1000_frames_usd"] == pytest.approx(expected, rel=1e-3)
    basis = fill_ratios(figures, 1)
    meta = {"link_mode": "inproc", "edges": 1, "cameras": 1, "frames": 10, "ratio_basis": basis}
    report = write_report(tmp_path, scenario, figures, runs, meta)
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["modes"]["edgeglm"]["uplink_ratio"] == pytest.approx(0.04)
    assert set(written["modes"]) == {"cloud_only", "sedna_ibt", "edgeglm"}
    plots = ("bandwidth_vs_recall.png", "latency_cdf.png", "uplink_over_time.png", "policy_band.png")
    for name in (*plots, "policy_rules.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "report.md").read_text()
    assert "| edgeglm |" in markdown and "4.0 %" in markdown
    assert "4.0 % of the bytes" in report["verdict"]
    assert "fewer bytes at equal or better recall" in report["verdict"]
    assert band_series(runs["edgeglm"])["e-0/person"] == [(2.0, 0.4, 0.7)]
    assert rule_series(runs["edgeglm"])["random_audit_rate"] == {"e-0/cam0": [(2.0, 0.04)]}
    assert "| 2 | v4 | e-0 | cam0 random_audit_rate: contradicted 8 of 40 |" in markdown
    assert "| e-0 | person | band | 0.40-0.70 | held: 31 of 40 pairs |" in markdown
    assert "| e-0 | cam0 | watch_reask_interval_s | 20 | 5 of 8 re-asks |" in markdown


def test_verdict_says_when_edgeglm_loses() -> None:
    base: dict[str, Any] = {
        "uplink_ratio": 0.5,
        "event_recall": 0.5,
        "event_precision": 0.9,
        "samples_lost": 2,
        "samples_sent": 10,
        "verdict_latency_ms": {"p50": None},
        "local_latency_ms": {"p50": 3.0},
    }
    modes = {
        "edgeglm": {**base, "uplink_bytes": 500},
        "sedna_ibt": {**base, "uplink_bytes": 100, "event_recall": 0.8},
    }
    modes["edge_only"] = {**base, "uplink_bytes": 0, "event_recall": 0.7, "samples_sent": 0}
    text = verdict(modes)
    assert "more bytes at lower recall" in text
    assert "more than EdgeGLM's 0.500: on this run asking the cloud cost recall" in text
    assert "6 mined samples were lost" in text  # 2 in each of the three modes
    # Who wins, in plain words: edge_only sends nothing, so the bytes go to the cheapest mode that asks.
    assert "fewest bytes of the modes that ask the cloud: sedna_ibt (0.00 MB)" in text
    assert "best recall: sedna_ibt (0.800)" in text
    assert "best precision: edge_only and edgeglm and sedna_ibt (0.900)" in text
    found = {what: (met, figures) for what, met, figures in targets(modes)}
    assert found["uplink bytes <= 0.5 x sedna_ibt's"][0] is False
    assert found["recall >= sedna_ibt's"] == (False, "0.500 against 0.800 (short by 0.3)")
    assert found["precision >= edge_only's + 0.05"][0] is False
