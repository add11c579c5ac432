"""Live camera sources over real sockets: dead cameras, silent cameras, and an MJPEG stream that stalls."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.metrics import EdgeMetrics
from edge.sources import CameraConfig, CameraSource
from sim.world.clips import ClipSpec, write_clip
from tests.helpers.wait import wait_until

GUARD_S = 30.0  # only against hangs: no test asserts how long anything took
FAST_RETRY = {"backoff_initial_s": 0.02, "backoff_max_s": 0.1, "open_timeout_s": 0.5, "stall_timeout_s": 0.5}


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


class MjpegCamera:
    """An HTTP MJPEG camera that sends `frames_per_connection` frames, then goes silent until closed."""

    def __init__(self, frames_per_connection: int) -> None:
        jpegs = [cv2.imencode(".jpg", np.full((48, 64, 3), 40 * i, np.uint8))[1].tobytes() for i in range(4)]
        closed = self.closed = threading.Event()
        self.connections = 0
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace;boundary=frame")
                self.end_headers()
                with contextlib.suppress(OSError):  # the client hung up: that is what the test wants
                    for i in range(frames_per_connection):
                        jpeg = jpegs[i % len(jpegs)]
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        self.wfile.write(head.encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                closed.wait(GUARD_S)

            def log_message(self, *args: object) -> None:
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/video.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


def metric(metrics: EdgeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"edgeglm_edge_{name}", labels)
    return 0.0 if value is None else value


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    return write_clip(ClipSpec(seed=2, seconds=2, fps=5, width=96, height=72), folder) / "frames"


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
async def test_unreachable_camera_keeps_retrying_while_a_good_camera_delivers(scheme, frames_dir):
    metrics = EdgeMetrics()
    dead = CameraSource(CameraConfig(id="dead", url=f"{scheme}://127.0.0.1:{closed_port()}/x", **FAST_RETRY), metrics)
    good = CameraSource(CameraConfig(id="good", url=str(frames_dir), realtime=False), metrics)
    await dead.start()
    await good.start()

    async def read_good() -> list[int]:
        seqs = []
        while (frame := await good.get()) is not None:
            seqs.append(frame.seq)
        return seqs

    assert await asyncio.wait_for(read_good(), GUARD_S) == list(range(10))
    await wait_until(
        lambda: metric(metrics, "camera_reconnects_total", camera="dead") >= 3, "three reconnects", GUARD_S
    )
    assert dead.state == "reconnecting"
    assert dead.last_error is not None
    assert "cannot open" in dead.last_error
    assert metric(metrics, "camera_up", camera="dead") == 0
    for source in (dead, good):
        await source.stop()
    assert not {t.name for t in threading.enumerate()} & {"camera-dead", "camera-good"}


async def test_camera_that_never_answers_is_given_up_on_at_the_open_timeout(silent_port):
    metrics = EdgeMetrics()
    config = CameraConfig(id="silent", url=f"http://127.0.0.1:{silent_port}/video.mjpg", **FAST_RETRY)
    source = CameraSource(config, metrics)
    await source.start()
    await wait_until(lambda: metric(metrics, "camera_reconnects_total", camera="silent") >= 1, "a reconnect", GUARD_S)
    assert source.last_error is not None
    await source.stop()
    # Whatever OpenCV was doing when stop() returned, it is bounded by the open timeout.
    await wait_until(
        lambda: "camera-silent" not in {t.name for t in threading.enumerate()}, "the thread ended", GUARD_S
    )


async def test_stalled_stream_is_reconnected_and_frames_flow_again():
    camera = MjpegCamera(frames_per_connection=3)
    metrics = EdgeMetrics()
    source = CameraSource(CameraConfig(id="mjpeg", url=camera.url, fps_cap=120, **FAST_RETRY), metrics)
    states: set[str] = set()
    try:
        await source.start()
        seqs: list[int] = []
        while camera.connections < 3 or len(seqs) < 5:
            frame = await asyncio.wait_for(source.get(), GUARD_S)
            assert frame is not None
            assert frame.image.shape == (48, 64, 3)
            seqs.append(frame.seq)
            states.add(source.state)
        # Seq keeps counting across reconnects; the watchdog counted each one.
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        assert metric(metrics, "camera_reconnects_total", camera="mjpeg") >= 2
        assert "streaming" in states
    finally:
        await source.stop()
        camera.close()
