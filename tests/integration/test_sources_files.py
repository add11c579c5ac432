"""Camera sources on real files with real OpenCV: image folders, MJPG video, pacing, drops, loops."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.metrics import EdgeMetrics
from edge.sources import CameraConfig, CameraSource, Frame, open_sources
from sim.world.clips import ClipSpec, write_clip
from tests.helpers.wait import wait_until

CLIP_FRAMES = 20  # 4 s at 5 fps
GUARD_S = 30.0  # only against hangs: no test asserts how long anything took


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world clip: frames/000000.jpg... and clip.avi (MJPG)."""
    folder = tmp_path_factory.mktemp("clip")
    return write_clip(ClipSpec(seed=1, seconds=4, fps=5, width=160, height=120), folder, video=True)


def metric(metrics: EdgeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"edgeglm_edge_{name}", labels)
    return 0.0 if value is None else value


async def read_all(source: CameraSource, limit: int = 10_000) -> list[Frame]:
    """Every frame until the source ends (None)."""

    async def collect() -> list[Frame]:
        frames = []
        while (frame := await source.get()) is not None:
            frames.append(frame)
            assert len(frames) <= limit
        return frames

    return await asyncio.wait_for(collect(), GUARD_S)


async def test_image_folder_yields_every_frame_in_order_then_none(clip):
    metrics = EdgeMetrics()
    source = CameraSource(CameraConfig(id="cam0", url=str(clip / "frames"), realtime=False, queue_size=2), metrics)
    await source.start()
    frames = await read_all(source)
    assert [f.seq for f in frames] == list(range(CLIP_FRAMES))
    assert all(f.camera_id == "cam0" and f.image.shape == (120, 160, 3) for f in frames)
    assert all(f.image.dtype == np.uint8 for f in frames)
    assert [f.captured_at for f in frames] == sorted(f.captured_at for f in frames)
    assert await source.get() is None
    assert source.state == "ended"
    assert metric(metrics, "frames_read_total", camera="cam0") == CLIP_FRAMES
    assert metric(metrics, "frames_dropped_total", camera="cam0", reason="queue_full") == 0
    await source.stop()


async def test_corrupt_and_truncated_images_are_counted_and_skipped(clip, tmp_path):
    frames_dir = shutil.copytree(clip / "frames", tmp_path / "frames")
    (frames_dir / "000005.jpg").write_bytes(b"this is not a jpeg")
    good = (frames_dir / "000009.jpg").read_bytes()
    (frames_dir / "000009.jpg").write_bytes(good[: len(good) // 2])
    (frames_dir / "notes.txt").write_text("not an image, not a frame")
    metrics = EdgeMetrics()
    source = CameraSource(CameraConfig(id="cam0", url=str(frames_dir), realtime=False), metrics)
    await source.start()
    frames = await read_all(source)
    assert [f.seq for f in frames] == [i for i in range(CLIP_FRAMES) if i not in (5, 9)]
    assert metric(metrics, "bad_frames_total", camera="cam0") == 2
    assert source.state == "ended"
    await source.stop()


async def test_mjpg_video_file_is_read_frame_by_frame(clip):
    metrics = EdgeMetrics()
    source = CameraSource(CameraConfig(id="avi", url=str(clip / "clip.avi"), realtime=False), metrics)
    await source.start()
    frames = await read_all(source)
    assert [f.seq for f in frames] == list(range(CLIP_FRAMES))
    assert frames[0].image.shape == (120, 160, 3)
    # The same picture as the JPEG of that frame, up to compression.
    jpeg = cv2.imread(str(clip / "frames" / "000007.jpg"))
    assert jpeg is not None
    assert np.abs(frames[7].image.astype(int) - jpeg.astype(int)).mean() < 8
    await source.stop()


async def test_video_faster_than_fps_cap_keeps_file_frame_indices_as_seq(tmp_path):
    path = tmp_path / "fast.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()
    metrics = EdgeMetrics()
    source = CameraSource(CameraConfig(id="fast", url=str(path), fps_cap=5, realtime=False), metrics)
    await source.start()
    frames = await read_all(source)
    assert [f.seq for f in frames] == list(range(0, 20, 2))
    assert metric(metrics, "frames_dropped_total", camera="fast", reason="fps_cap") == 10
    await source.stop()


async def test_slow_consumer_gets_the_newest_frames_and_drops_are_counted(clip):
    metrics = EdgeMetrics()
    config = CameraConfig(id="cam0", url=str(clip / "frames"), fps_cap=100, queue_size=2, realtime=True)
    source = CameraSource(config, metrics)
    await source.start()
    # The consumer is busy while the whole clip plays; each frame beyond the queue's two pushes one out.
    await wait_until(
        lambda: metric(metrics, "frames_dropped_total", camera="cam0", reason="queue_full") == CLIP_FRAMES - 2,
        "the clip played to its end",
        GUARD_S,
    )
    frames = await read_all(source)
    assert [f.seq for f in frames] == [CLIP_FRAMES - 2, CLIP_FRAMES - 1]
    assert source.state == "ended"
    await source.stop()


async def test_on_the_recording_timeline_a_slow_consumer_loses_nothing_and_capture_times_are_the_files(clip, tmp_path):
    """The same slow consumer as above, on the recording's timeline: every frame arrives, stamped with
    its place in the clip (1/fps apart, across a loop's seam too), however late it was taken."""
    frames_dir = tmp_path / "ten"
    frames_dir.mkdir()
    for i in range(10):
        shutil.copy(clip / "frames" / f"{i:06d}.jpg", frames_dir)
    metrics = EdgeMetrics()
    config = CameraConfig(
        id="cam0", url=str(frames_dir), fps_cap=50, queue_size=2, realtime=True, timeline="recording", loop=True
    )
    source = CameraSource(config, metrics)
    await source.start()
    # The consumer lets the queue stay full until the source has had to wait for it.
    await wait_until(source._queue.full, "the queue full")
    frames: list[Frame] = []
    while len(frames) < 15:
        frame = await asyncio.wait_for(source.get(), GUARD_S)
        assert frame is not None
        frames.append(frame)
    await source.stop()
    assert [f.seq for f in frames] == [*range(10), *range(5)]
    assert metric(metrics, "frames_dropped_total", camera="cam0", reason="queue_full") == 0
    steps = np.diff([f.captured_at for f in frames])
    assert np.allclose(steps, 1 / 50, atol=1e-5), steps  # unix seconds as floats: about 0.2 µs apart


async def test_looping_folder_replays_from_the_first_frame(clip, tmp_path):
    frames_dir = tmp_path / "five"
    frames_dir.mkdir()
    for i in range(5):
        shutil.copy(clip / "frames" / f"{i:06d}.jpg", frames_dir)
    source = CameraSource(CameraConfig(id="loop", url=str(frames_dir), loop=True, realtime=False), EdgeMetrics())
    await source.start()
    seqs = []
    for _ in range(12):
        frame = await asyncio.wait_for(source.get(), GUARD_S)
        assert frame is not None
        seqs.append(frame.seq)
    assert seqs == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert source.state == "streaming"
    await source.stop()
    assert len(await read_all(source)) <= 4  # what was queued at stop, then None


async def test_stop_ends_the_reader_threads_and_is_idempotent(clip):
    configs = [
        CameraConfig(id=f"cam{i}", url=str(clip / "frames"), fps_cap=2, loop=True, realtime=True) for i in range(2)
    ]
    sources = await open_sources(configs, EdgeMetrics())
    for source in sources:
        assert await asyncio.wait_for(source.get(), GUARD_S) is not None
    for source in sources:
        await source.stop()
        await source.stop()
    alive = {t.name for t in threading.enumerate()}
    assert not alive & {"camera-cam0", "camera-cam1"}
    for source in sources:
        assert source.state == "ended"
        await read_all(source)
        assert await source.get() is None


async def test_missing_folder_is_retried_until_it_appears(clip, tmp_path):
    metrics = EdgeMetrics()
    later = tmp_path / "later"
    config = CameraConfig(id="late", url=str(later), realtime=False, backoff_initial_s=0.02, backoff_max_s=0.05)
    source = CameraSource(config, metrics)
    await source.start()
    await wait_until(lambda: metric(metrics, "camera_reconnects_total", camera="late") >= 2, "two reconnects", GUARD_S)
    assert source.state == "reconnecting"
    assert source.last_error is not None
    assert str(later) in source.last_error
    assert metric(metrics, "camera_up", camera="late") == 0
    # The folder appears whole (renamed into place), or the reader could list it half copied.
    shutil.copytree(clip / "frames", tmp_path / "staging")
    (tmp_path / "staging").rename(later)
    frames = await read_all(source)
    assert [f.seq for f in frames] == list(range(CLIP_FRAMES))
    assert source.last_error is None
    await source.stop()
