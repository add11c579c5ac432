"""The edge agent as its operator runs it: `python -m edge run --config edge.yaml`, probed and stopped by signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from sim.world.clips import ClipSpec, write_clip
from tests.helpers.broker import free_port
from tests.helpers.policy_keys import generate_keypair
from tests.helpers.wait import wait_until_sync

MODEL = Path(__file__).resolve().parents[2] / "sim" / "models" / "edge.onnx"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_agent_reports_autonomous_and_drains_on_sigterm(tmp_path: Path) -> None:
    clip = write_clip(ClipSpec(seed=0, seconds=4, fps=5, quiet_start_seconds=0.5, mean_gap_seconds=1.0), tmp_path / "c")
    generate_keypair(tmp_path / "keys", "policy-signing")
    health = free_port()
    config = {
        "edge_id": "gw-proc",
        "state_dir": str(tmp_path / "state"),
        "cameras": [
            {"id": "cam0", "url": str(clip / "frames"), "fps_cap": 5, "loop": True},
            # Nothing listens there: this camera never answers, and must not stop the other one.
            {"id": "dead", "url": f"rtsp://127.0.0.1:{free_port()}/x", "open_timeout_s": 0.5, "backoff_max_s": 1},
        ],
        "detector": {"model_path": str(MODEL), "intra_op_threads": 1},
        "uplink": {"target": f"127.0.0.1:{free_port()}"},
        "policy": {"public_key": str(tmp_path / "keys" / "policy-signing.pub")},
        "health": {"host": "127.0.0.1", "port": health},
        "pipeline": {"drain_deadline_s": 2},
    }
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    with (tmp_path / "edge.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(path)], stdout=log, stderr=log)
    try:

        def answered_ready() -> tuple[int, str] | None:
            try:
                status, body = get(f"http://127.0.0.1:{health}/readyz")
            except (urllib.error.URLError, ConnectionError):
                status, body = 0, ""
            assert process.poll() is None, (tmp_path / "edge.log").read_text()
            return (status, body) if status == 200 else None

        status, body = wait_until_sync(answered_ready, "/readyz to answer 200", 30, 0.1)
        assert status == 200, body
        ready = json.loads(body)
        assert ready["state"] == "autonomous"
        assert any("cloud unreachable" in reason for reason in ready["reasons"])
        metrics = get(f"http://127.0.0.1:{health}/metrics")[1]
        assert 'edgeglm_edge_frames_read_total{camera="cam0"}' in metrics

        def reconnected() -> str:
            text = get(f"http://127.0.0.1:{health}/metrics")[1]
            return text if 'edgeglm_edge_camera_reconnects_total{camera="dead"}' in text else ""

        metrics = wait_until_sync(reconnected, "a reconnect of the dead camera in /metrics", 10, 0.1)
        assert 'edgeglm_edge_camera_reconnects_total{camera="dead"}' in metrics
        assert 'edgeglm_edge_camera_up{camera="dead"} 0.0' in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, (tmp_path / "edge.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert summary["frames_read"] > 0
    assert "draining" in (tmp_path / "edge.log").read_text()
