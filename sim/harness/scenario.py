"""`edgeglm-sim run`: a scenario from its YAML file to the report folder."""

from __future__ import annotations

import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sim.fleet.summary import cloud_only_bytes
from sim.harness.drift import DriftLog, drift_hooks
from sim.harness.drift_report import write_drift
from sim.harness.measure import fill_ratios, measure_mode
from sim.harness.report import table, write_report
from sim.harness.run import ModeRun, generate_world, keygen, run_mode
from sim.scenarios.spec import Scenario


def run_scenario(scenario: Scenario, out: Path, console: Console) -> dict[str, Any]:
    """Generate the world, run every mode, write report.json / report.md / plots; returns the report."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if scenario.light_fleet is not None:
        return _run_light(scenario, out, console)
    if scenario.link_mode == "netns":
        from sim.link.emulator import netns_available

        ok, why = netns_available()
        if not ok:
            raise RuntimeError(f"link_mode netns is not available here: {why} (use --link-mode inproc)")
    cameras = generate_world(scenario, out, console)
    keygen(out)
    frames = sum(len(list((camera.clip / "frames").glob("*.jpg"))) for camera in cameras)
    # Re-encoding every frame is only needed when no cloud_only run measures it.
    estimate = None if "cloud_only" in scenario.modes else cloud_only_bytes(cameras, scenario.policy.jpeg_quality)[1]
    runs: dict[str, ModeRun] = {}
    figures: dict[str, dict[str, Any]] = {}
    drift_log = DriftLog() if scenario.retrain is not None else None
    started = time.time()
    progress = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed:>4.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        tasks = {mode: progress.add_task(mode, total=scenario.duration_s, start=False) for mode in scenario.modes}
        for mode in scenario.modes:
            progress.start_task(tasks[mode])
            hooks = drift_hooks(scenario, out, drift_log) if drift_log is not None and mode == "edgeglm" else None
            run = asyncio.run(run_mode(scenario, mode, out, cameras, progress, tasks[mode], hooks))
            runs[mode] = run
            figures[mode] = measure_mode(run, cameras, scenario, frames)
            progress.console.print(
                f"{mode}: {figures[mode]['samples_sent']} samples, {figures[mode]['uplink_bytes'] / 1e6:.2f} MB up, "
                f"recall {figures[mode]['event_recall']}"
            )
    basis = fill_ratios(figures, estimate)
    meta = {
        "link_mode": scenario.link_mode,
        "backend": scenario.cloud.backend,
        "edges": len(scenario.edge_ids()),
        "cameras": len(cameras),
        "duration_s": scenario.duration_s,
        "frames": frames,
        "every_frame_jpeg_bytes": estimate,
        "ratio_basis": basis,
        "wall_s": round(time.time() - started, 1),
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
    }
    report = write_report(out, scenario, figures, runs, meta)
    if drift_log is not None:
        write_drift(out, cameras, runs, drift_log.to_json())
    console.print(table(figures))
    console.print(report["verdict"])
    console.print(f"report: {out / 'report.md'} (and report.json, *.png)")
    return report


def _run_light(scenario: Scenario, out: Path, console: Console) -> dict[str, Any]:
    """fleet-1000: lightweight simulated edges against one cloud process (ingest capacity)."""
    from sim.fleet.light_cloud import run_fleet_1000
    from sim.fleet.light_config import Fleet1000Config

    assert scenario.light_fleet is not None
    settings = dict(scenario.light_fleet.settings)
    settings["fleet"] = {"seed": scenario.seed, **settings.get("fleet", {})}
    config = Fleet1000Config(**settings)
    result = run_fleet_1000(config, out, console)
    report = {"scenario": scenario.name, "kind": "light_fleet", "light_fleet": result}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    lines = [f"# Scenario `{scenario.name}`", "", scenario.description.strip(), "", "```json"]
    lines += [json.dumps(result, indent=1, default=str), "```"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    console.print(f"report: {out / 'report.md'}")
    return report
