"""The demo's table, for people."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """One row per edge, then the fleet's totals and what cloud-only would have cost."""
    table = Table(title="EdgeGLM fleet run")
    for column in ("edge", "frames", "gated", "detected", "samples sent", "uplink", "verdicts", "policy"):
        table.add_column(column, justify="right")
    for edge_id, edge in summary["edges"].items():
        table.add_row(
            edge_id,
            f"{edge['frames_read']:.0f}",
            f"{edge['frames_gated']:.0f}",
            f"{edge['frames_detected']:.0f}",
            f"{edge['samples_sent']:.0f}",
            f"{edge['uplink_bytes'] / 1e6:.2f} MB",
            f"{edge['verdicts']:.0f}",
            f"v{edge['policy_version']}",
        )
    console.print(table)
    ratio = summary["uplink_ratio"]
    latency = summary["verdict_latency_ms"]
    events = summary["events"]
    console.print(
        f"uplink {summary['uplink_bytes'] / 1e6:.2f} MB vs {summary['cloud_only_bytes'] / 1e6:.2f} MB if every frame "
        f"went to the cloud ({'–' if ratio is None else f'{ratio:.1%}'}); "
        f"verdict latency p50 {_ms(latency['p50'])}, p95 {_ms(latency['p95'])}; "
        f"watched events recalled {events['recalled']}/{events['watched']} ({summary['event_recall']:.0%})"
    )
