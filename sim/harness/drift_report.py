"""The drift section of a report: each camera's figures before the drift, after it, and on each new model.

A camera's clip is cut into windows at its drift second and at every second its edge began running
another model (from the drift loop's polls: the cloud's /edges and the agent's frames read). In each
window, with the definitions of `sim.eval.events`:

- recall: the world objects *first in view* in the window that some event track explains; edge
  recall: the same with only the tracks the edge announced on its own (`source: edge`, sure without
  the cloud), i.e. what the edge model alone saw, while recall includes what the cloud confirmed;
- precision: the event tracks *first sighted* in the window (not withdrawn) that some object explains;
- uplink bytes: what the camera's edge sent through its emulated link while its camera played the
  window (one camera per edge in the drift scenarios; the link counts per edge), placed on the clip
  by the polls' frames read (without polls, as in edge_only: wall second = clip second).

The plot shows recall per camera in bins of the clip and uplink per edge, with the drift and every
model switch and rollout stage marked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sim.eval.events import EventTrack, TruthObject, event_tracks, explains, truth_objects
from sim.fleet.summary import CameraRun, read_jsonl
from sim.harness.run import ModeRun

PLOT = "drift_over_time.png"


@dataclass(frozen=True)
class Window:
    """A stretch of one camera's clip with one look and one model: [start_s, end_s)."""

    name: str
    start_s: float
    end_s: float
    look: str
    model: str


def clip_facts(clip: Path) -> dict[str, Any]:
    """The clip's manifest (fps, frames, drift)."""
    facts: dict[str, Any] = json.loads((clip / "clip.json").read_text())
    return facts


def model_changes(
    polls: Sequence[dict[str, Any]], edge_id: str, camera_key: str, fps: float
) -> list[tuple[float, str]]:
    """(clip second, model version) each time the edge was first seen running another model."""
    changes: list[tuple[float, str]] = []
    for poll in polls:
        model = poll.get("models", {}).get(edge_id)
        frames = poll.get("frames", {}).get(camera_key)
        if not model or frames is None:
            continue
        if not changes or changes[-1][1] != model:
            changes.append((0.0 if not changes else frames / fps, model))
    return changes


def windows_of(facts: dict[str, Any], changes: list[tuple[float, str]], first_model: str) -> list[Window]:
    """The camera's windows: cut at the drift and at each model change (module docstring)."""
    end = facts["frames"] / facts["fps"]
    drift = facts.get("drift")
    cuts: list[tuple[float, str, str]] = []  # (second, what changes, to what)
    if drift is not None:
        cuts.append((float(drift["at_s"]), "look", str(drift["to"])))
    cuts += [(second, "model", model) for second, model in changes[1:]]
    cuts.sort(key=lambda cut: cut[0])
    day = "night" if facts.get("night") else "day"
    look, model = day, changes[0][1] if changes else first_model
    original = model
    out: list[Window] = []
    start = 0.0
    for second, what, value in [*cuts, (end, "end", "")]:
        if second > start:
            name = _name(look, model, original, day, drift is not None, any(w.model != original for w in out))
            out.append(Window(name, start, min(second, end), look, model))
            start = second
        if what == "look":
            look = value
        elif what == "model":
            model = value
    return out


def _name(look: str, model: str, original: str, day: str, drifts: bool, replaced: bool) -> str:
    """before the drift / after the drift / <look>, model <v> / ..., back on <original> / no drift."""
    if model != original:
        return f"{look}, model {model}"
    if replaced:
        return f"{look}, back on {model}"
    if not drifts:
        return "no drift"
    return "before the drift" if look == day else "after the drift"


def first_frame(obj: TruthObject) -> int | None:
    """The frame an object first shows in (None: never visible)."""
    return min(obj.boxes) if obj.boxes else None


def edge_announced(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the tracks whose `new` came from the edge alone (it was sure, without the cloud)."""
    ids = {e["id"] for e in events if e.get("type") == "new" and e.get("source") == "edge"}
    return [e for e in events if e.get("id") in ids]


def window_score(
    objects: list[TruthObject],
    tracks: list[EventTrack],
    fps: float,
    window: Window,
    edge_tracks: list[EventTrack] | None = None,
) -> dict[str, float | int | None]:
    """Recall, edge recall and precision of one window (module docstring)."""
    lo, hi = window.start_s * fps, window.end_s * fps
    inside = [o for o in objects if (f := first_frame(o)) is not None and lo <= f < hi]
    live = [t for t in tracks if not t.withdrawn]
    recalled = sum(any(explains(o, t) for t in live) for o in inside)
    own = [t for t in edge_tracks or [] if not t.withdrawn]
    edge_recalled = sum(any(explains(o, t) for t in own) for o in inside)
    mine = [t for t in live if t.sightings and lo <= min(frame for frame, _ in t.sightings) < hi]
    explained = sum(any(explains(o, t) for o in objects) for t in mine)
    return {
        "objects": len(inside),
        "recalled": recalled,
        "recall": round(recalled / len(inside), 3) if inside else None,
        "edge_recalled": edge_recalled,
        "edge_recall": round(edge_recalled / len(inside), 3) if inside else None,
        "tracks": len(mine),
        "precision": round(explained / len(mine), 3) if mine else None,
    }


def wall_of(polls: Sequence[dict[str, Any]], camera_key: str, fps: float) -> tuple[list[float], list[float]]:
    """(clip seconds, wall seconds) pairs of a camera from the polls, for interpolation."""
    pairs = [(p["frames"][camera_key] / fps, float(p["t"])) for p in polls if camera_key in p.get("frames", {})]
    pairs.sort()
    return [c for c, _ in pairs], [w for _, w in pairs]


def bytes_in(series: Sequence[int], clip_s: list[float], wall_s: list[float], window: Window) -> int:
    """Uplink bytes of the wall seconds in which the camera played the window."""
    lo, hi = window.start_s, window.end_s
    if clip_s:
        lo, hi = (float(v) for v in np.interp([window.start_s, window.end_s], clip_s, wall_s))
        if window.end_s >= clip_s[-1]:
            hi = float(len(series))  # what the edge sent after its last frame (drain) goes to the last window
    return int(sum(series[int(lo) : int(hi)]))


def drift_figures(
    cameras: list[CameraRun], mode_folder: Path, link_stats: dict[str, dict[str, Any]], polls: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """'edge/camera' -> its windows with recall, precision and uplink bytes."""
    figures: dict[str, list[dict[str, Any]]] = {}
    for camera in cameras:
        key = f"{camera.edge_id}/{camera.camera_id}"
        facts = clip_facts(camera.clip)
        fps = float(facts["fps"])
        events = read_jsonl(mode_folder / "edges" / camera.edge_id / "events.jsonl")
        tracks = event_tracks(events).get(camera.camera_id, [])
        edge_tracks = event_tracks(edge_announced(events)).get(camera.camera_id, [])
        objects = truth_objects(camera.clip)
        changes = model_changes(polls, camera.edge_id, key, fps)
        clip_s, wall_s = wall_of(polls, key, fps)
        series = link_stats.get(camera.edge_id, {}).get("up_series_bytes", [])
        rows = []
        for window in windows_of(facts, changes, "configured"):
            row: dict[str, Any] = {
                "window": window.name,
                "from_s": round(window.start_s, 1),
                "to_s": round(window.end_s, 1),
                "look": window.look,
                "model": window.model,
                **window_score(objects, tracks, fps, window, edge_tracks),
                "uplink_bytes": bytes_in(series, clip_s, wall_s, window),
            }
            row["uplink_bytes_per_s"] = round(row["uplink_bytes"] / max(window.end_s - window.start_s, 1e-9), 1)
            rows.append(row)
        figures[key] = rows
    return figures


def drift_section(mode: str, figures: dict[str, list[dict[str, Any]]], log: dict[str, Any] | None) -> list[str]:
    """Markdown: the loop's steps and outcome, then each camera's windows."""
    lines = [f"## Drift: {mode}", ""]
    if log is not None:
        lines += [f"Outcome of the model loop: **{log['outcome']}**.", ""]
        if log["steps"]:
            lines += ["| t (s) | clip s | step | ok | took s | detail |", "|---|---|---|---|---|---|"]
            for step in log["steps"]:
                detail = str(step["detail"]).replace("|", "/")[:400]
                lines.append(
                    f"| {step['t']:.0f} | {step['clip_s']:.0f} | {step['step']} | {'yes' if step['ok'] else 'no'} | "
                    f"{step['wall_s']:.1f} | {detail} |"
                )
            lines.append("")
        history = ((log.get("rollout") or {}).get("rollout") or {}).get("history", [])
        if history:
            lines += ["Rollout history (the cloud's rule, no operator):", ""]
            lines += [f"- {entry['stage']} (by {entry['who']}): {entry['why']}" for entry in history]
            lines.append("")
    lines += [
        "| camera | window | clip s | model | objects | recall | edge recall | precision | uplink MB | uplink kB/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for camera, rows in figures.items():
        for row in rows:
            recall = "–" if row["recall"] is None else f"{row['recall']:.3f} ({row['recalled']}/{row['objects']})"
            own = "–" if row["edge_recall"] is None else f"{row['edge_recall']:.3f} ({row['edge_recalled']})"
            precision = "–" if row["precision"] is None else f"{row['precision']:.3f}"
            lines.append(
                f"| {camera} | {row['window']} | {row['from_s']:.0f}–{row['to_s']:.0f} | {row['model']} | "
                f"{row['objects']} | {recall} | {own} | {precision} | {row['uplink_bytes'] / 1e6:.2f} | "
                f"{row['uplink_bytes_per_s'] / 1e3:.1f} |"
            )
    lines.append("")
    return lines


def binned_recall(
    objects: list[TruthObject], tracks: list[EventTrack], fps: float, end_s: float, bin_s: float
) -> tuple[list[float], list[float]]:
    """(bin centre, recall or nan) over the clip."""
    live = [t for t in tracks if not t.withdrawn]
    centres: list[float] = []
    values: list[float] = []
    for start in np.arange(0.0, end_s, bin_s):
        inside = [o for o in objects if (f := first_frame(o)) is not None and start * fps <= f < (start + bin_s) * fps]
        centres.append(float(start + bin_s / 2))
        values.append(sum(any(explains(o, t) for t in live) for o in inside) / len(inside) if inside else np.nan)
    return centres, values


def plot_drift(
    cameras: list[CameraRun],
    mode_folder: Path,
    link_stats: dict[str, dict[str, Any]],
    polls: list[dict[str, Any]],
    log: dict[str, Any] | None,
    bin_s: float = 60.0,
) -> Any:
    """Recall per camera (bins of the clip) and uplink per edge over the clip, drift and model switches marked."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for index, camera in enumerate(cameras):
        key = f"{camera.edge_id}/{camera.camera_id}"
        facts = clip_facts(camera.clip)
        fps = float(facts["fps"])
        end = facts["frames"] / fps
        events = read_jsonl(mode_folder / "edges" / camera.edge_id / "events.jsonl")
        objects = truth_objects(camera.clip)
        color = f"C{index}"
        for shown, style, what in ((events, "-", "recall"), (edge_announced(events), "--", "edge recall")):
            tracks = event_tracks(shown).get(camera.camera_id, [])
            centres, values = binned_recall(objects, tracks, fps, end, bin_s)
            top.plot(centres, values, marker="o", linestyle=style, color=color, label=f"{key} {what}")
        clip_s, wall_s = wall_of(polls, key, fps)
        series = link_stats.get(camera.edge_id, {}).get("up_series_bytes", [])
        if series:
            walls = np.arange(len(series), dtype=float)
            clips = np.interp(walls, wall_s, clip_s) if clip_s else walls
            kernel = np.ones(10) / 10  # ten-second mean: single samples make a spiky line
            bottom.plot(clips, np.convolve(np.asarray(series, float), kernel, "same") / 1e3, color=color, label=key)
        if facts.get("drift"):
            for axis in (top, bottom):
                axis.axvline(facts["drift"]["at_s"], color=color, linestyle="--", alpha=0.7)
            top.annotate(f"drift: {facts['drift']['to']}", (facts["drift"]["at_s"], 1.02), color=color, fontsize=8)
        for number, (second, model) in enumerate(model_changes(polls, camera.edge_id, key, fps)[1:]):
            for axis in (top, bottom):
                axis.axvline(second, color=color, linestyle=":", alpha=0.9)
            where = (second, 0.04 + 0.07 * (index + 2 * number))  # stacked: switches close in time do not overlap
            top.annotate(f"{camera.edge_id} runs {model}", where, color=color, fontsize=8)
    top.set_ylim(0, 1.1)
    top.set_ylabel(f"recall (objects first seen per {bin_s:.0f} s)")
    top.set_title("Recall (dashed: the edge alone) and uplink over each clip; vertical: drift --, model switch :")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_ylabel("uplink kB/s (10 s mean)")
    bottom.set_xlabel("second of the clip")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    if log is not None:
        stages = ((log.get("rollout") or {}).get("rollout") or {}).get("history", [])
        bottom.set_title("; ".join(str(entry["stage"]) for entry in stages) or log["outcome"], fontsize=8)
    figure.tight_layout()
    return figure


def write_drift(out: Path, cameras: list[CameraRun], runs: dict[str, ModeRun], log: dict[str, Any] | None) -> None:
    """Add each mode's drift windows to report.json and report.md, and the edgeglm mode's plot."""
    write_drift_sections(out, cameras, {mode: (run.folder, run.link_stats) for mode, run in runs.items()}, log)


def rewrite_drift(out: Path) -> None:
    """The drift section again from a finished run's files (drift.json, link_stats.json, the world), for a
    report whose definitions changed since the run; the rest of report.md is kept up to the section."""
    cameras = [
        CameraRun(clip.parent.name, clip.name, clip) for clip in sorted((out / "world").glob("*/*")) if clip.is_dir()
    ]
    modes = {}
    for folder in sorted((out / "modes").iterdir()):
        links = json.loads((folder / "links" / "link_stats.json").read_text())["edges"]
        modes[folder.name] = (folder, links)
    log_path = out / "modes" / "edgeglm" / "drift.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else None
    text = (out / "report.md").read_text()
    cut = text.find("## Drift: ")
    if cut >= 0:
        tail = text[text.find("Definitions:", cut) :]
        (out / "report.md").write_text(text[:cut] + tail)
    write_drift_sections(out, cameras, modes, log)


def write_drift_sections(
    out: Path,
    cameras: list[CameraRun],
    modes: dict[str, tuple[Path, dict[str, dict[str, Any]]]],
    log: dict[str, Any] | None,
) -> None:
    """Each mode's (folder, link stats per edge) into report.json's `drift` and report.md's drift section."""
    report = json.loads((out / "report.json").read_text())
    sections: list[str] = []
    report["drift"] = {"loop": log, "modes": {}}
    for mode, (folder, link_stats) in modes.items():
        mode_log = log if mode == "edgeglm" else None
        polls = mode_log["polls"] if mode_log is not None else []
        figures = drift_figures(cameras, folder, link_stats, polls)
        report["drift"]["modes"][mode] = figures
        sections += drift_section(mode, figures, mode_log)
        if mode == "edgeglm":
            figure = plot_drift(cameras, folder, link_stats, polls, mode_log)
            figure.savefig(out / PLOT, dpi=110, bbox_inches="tight")
            plt.close(figure)
            sections += [f"![{PLOT}]({PLOT})", ""]
    if report["drift"]["loop"] is not None:
        report["drift"]["loop"] = {k: v for k, v in log.items() if k != "polls"} if log else None
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    text = (out / "report.md").read_text()
    marker = "Definitions:"
    head, _, tail = text.rpartition(marker)
    body = "\n".join([*sections, "Drift windows: see `sim/harness/drift_report.py`.", ""])
    (out / "report.md").write_text(f"{head}{body}\n{marker}{tail}" if head else f"{text}\n{body}")
