"""A real cloud service and real edge agents on one machine, for the loop tests: their configs on
loopback (gRPC, or MQTT through a test broker), the committed edge model, mining settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud.config import CloudConfig
from edge.config import EdgeConfig
from sim.world.clips import ClipSpec, write_clip
from tests.helpers.broker import MosquittoBroker

MODEL = Path(__file__).resolve().parents[2] / "sim" / "models" / "edge.onnx"

# Mines nothing: no band, no watch-list, no motion rule, no audit.
SILENT = {
    "mining": {
        "uncertainty_band_enabled": False,
        "watch_list": [],
        "motion_without_detection_enabled": False,
        "random_audit_enabled": False,
    }
}
# Everything the detector sees goes up.
WATCH_ALL = {"mining": {**SILENT["mining"], "watch_list": ["person", "cat", "motorcycle", "cup", "rocket"]}}


def make_agent_clip(folder: Path) -> Path:
    """Eight seconds where objects cross often."""
    return write_clip(ClipSpec(seed=0, seconds=8, fps=5, quiet_start_seconds=0.5, mean_gap_seconds=1.5), folder)


def every_frame(rate: int | None = None) -> dict[str, object]:
    """Watch everything, no resend interval: many samples, quickly."""
    uplink = {} if rate is None else {"budget_bytes_per_s": rate, "burst_bytes": rate}
    return {"mining": {**WATCH_ALL["mining"], "resend_interval_s": 0.0}, "uplink": uplink}


def cloud_config(
    tmp_path: Path, clip: Path, fleet: dict[str, Any], broker: MosquittoBroker | None = None
) -> CloudConfig:
    mqtt: dict[str, Any] = {"enabled": broker is not None}
    if broker is not None:
        mqtt.update({"host": broker.host, "port": broker.port})
    return CloudConfig.model_validate(
        {
            "mqtt": mqtt,
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
            "backend": {"kind": "oracle", "ground_truth": {"cam0": str(clip)}, "delay_ms": 5, "jitter_ms": 0},
            "batcher": {"max_queue_delay_ms": 2},
            "store": {"path": str(tmp_path / "cloud" / "verdicts.sqlite")},
            "policy": {
                "signing_key": str(tmp_path / "keys" / "policy-signing.key"),
                "create_signing_key": True,
                "fleet": fleet,
            },
            "admin": {"enabled": False},
        }
    )


def edge_config(
    tmp_path: Path,
    clip: Path,
    port: int,
    edge_id: str,
    *,
    loop: bool = False,
    initial: dict[str, Any] | None = None,
    broker: MosquittoBroker | None = None,
    ask: str = "per_track",
) -> EdgeConfig:
    """An agent on `clip`; `ask="per_frame"` with `every_frame()` sends every frame (volume for delivery tests)."""
    uplink: dict[str, Any] = {"target": f"127.0.0.1:{port}", "heartbeat_interval_s": 0.5}
    if broker is not None:
        uplink = {"kind": "mqtt", "host": broker.host, "port": broker.port, "heartbeat_interval_s": 0.5}
    return EdgeConfig.model_validate(
        {
            "edge_id": edge_id,
            "state_dir": str(tmp_path / edge_id),
            "cameras": [{"id": "cam0", "url": str(clip / "frames"), "fps_cap": 5, "realtime": loop, "loop": loop}],
            "detector": {"model_path": str(MODEL), "intra_op_threads": 1},
            "uplink": uplink,
            "policy": {"public_key": str(tmp_path / "keys" / "policy-signing.pub"), "initial": initial or {}},
            "health": {"host": "127.0.0.1", "port": 0},
            "pipeline": {"drain_deadline_s": 20},
            "tracking": {"ask": ask},
        }
    )
