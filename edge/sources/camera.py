"""A camera source: a reader thread per camera, a bounded asyncio queue, and a watchdog.

Blocking OpenCV calls run in the camera's own thread, never on the event loop; frames cross to the
loop with `call_soon_threadsafe`. Live cameras (and files played in real time) never wait for the
consumer: when the queue is full the oldest frame is dropped and counted, so detection always sees
fresh frames. Files played with `realtime: false` wait for the consumer instead, for benchmarks.

The watchdog lives in the same thread: a failed open, a failed or timed-out read (OpenCV's read
timeout is set to `stall_timeout_s`) or no decodable frame for that long closes the source and
reopens it after a capped, fully jittered exponential backoff. A camera that never opens keeps
retrying in the background; the other cameras, and the caller, are not held up by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from random import Random
from typing import Literal

from edge.metrics import EdgeMetrics
from edge.sources.config import CameraConfig, redact, source_kind
from edge.sources.frame import Frame, SourceState
from edge.sources.pacing import Backoff, FrameSelector, RateLimiter
from edge.sources.readers import BadFrameError, Reader, SourceOpenError, open_reader

logger = logging.getLogger(__name__)

STOP_WAIT_S = 0.5
"""How long `stop` waits for the reader thread; one stuck inside OpenCV exits when its call returns."""
_POLL_S = 0.05

Outcome = Literal["ended", "stalled", "stopped"]


class CameraSource:
    """Frames of one camera, read in a thread of its own and handed to asyncio consumers.

    One consumer per source: `get` returns the next frame, or None once a file that does not loop
    has ended (or the source was stopped) and every queued frame was taken.
    """

    def __init__(self, config: CameraConfig, metrics: EdgeMetrics, rng: Random | None = None) -> None:
        self.config = config
        self._metrics = metrics
        self._live = source_kind(config.url) == "network"
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s, rng)
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=config.queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished = False
        self._exited = asyncio.Event()
        self._state: SourceState = "connecting"
        self._last_error: str | None = None
        self._last_frame_at = time.monotonic()
        self._live_seq = 0
        self._limiter: RateLimiter | None = None
        # timeline "recording": capture time = playback start + place in the file (across loops)
        self._recording_origin: float | None = None
        self._recording_t = 0.0
        self._stall_error = f"no frame for {config.stall_timeout_s:g} s (read failed or timed out)"
        camera = config.id
        metrics.camera_up.labels(camera).set(0)
        for counter in (metrics.frames_read, metrics.bad_frames, metrics.camera_reconnects):
            counter.labels(camera)
        for reason in ("queue_full", "fps_cap"):
            metrics.frames_dropped.labels(camera, reason)

    @property
    def camera_id(self) -> str:
        """The camera's id."""
        return self.config.id

    @property
    def state(self) -> SourceState:
        """Where the source is; a live camera stuck in a read beyond stall_timeout_s shows as stalled."""
        state = self._state
        if state == "streaming" and self._live and time.monotonic() - self._last_frame_at > self.config.stall_timeout_s:
            return "stalled"
        return state

    @property
    def last_error(self) -> str | None:
        """Why the last open or read failed; cleared when frames flow again."""
        return self._last_error

    async def start(self) -> None:
        """Start the reader thread; returns at once (the camera connects in the background)."""
        if self._thread is not None or self._stop.is_set():
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.camera_id}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop reading; frames already queued are still returned by `get`, then None. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            try:
                await asyncio.wait_for(self._exited.wait(), STOP_WAIT_S)
                # The thread signalled from its last statement: this join returns at once.
                self._thread.join(STOP_WAIT_S)
            except TimeoutError:
                logger.warning("camera %s: reader is in an OpenCV call; it exits when that returns", self.camera_id)
        if self._state not in ("ended", "failed"):
            self._state = "ended"
        self._metrics.camera_up.labels(self.camera_id).set(0)
        self._finish()

    def discard(self) -> int:
        """Empty the queue of a stopped source; how many frames it held (the caller counts them)."""
        left = 0
        while not self._queue.empty():
            if self._queue.get_nowait() is not None:
                left += 1
        return left

    async def get(self) -> Frame | None:
        """The next frame, waiting for it; None when the source has ended for good."""
        if self._finished and self._queue.empty():
            return None
        return await self._queue.get()

    # --- event-loop side -------------------------------------------------------------------------

    def _offer(self, frame: Frame) -> None:
        if self._finished:  # read as the source stopped: it goes nowhere
            self._metrics.frames_dropped.labels(self.camera_id, "shutdown").inc()
            return
        if self._queue.full():
            self._queue.get_nowait()
            self._metrics.frames_dropped.labels(self.camera_id, "queue_full").inc()
        self._queue.put_nowait(frame)

    async def _put_waiting(self, frame: Frame) -> None:
        if self._finished:  # read as the source stopped: it goes nowhere
            self._metrics.frames_dropped.labels(self.camera_id, "shutdown").inc()
            return
        await self._queue.put(frame)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._queue.empty():
            self._queue.put_nowait(None)  # wakes a consumer waiting in get()

    # --- reader thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._watch()
        except Exception as exc:
            # A bug, not a camera fault: made visible, and only this camera stops.
            logger.exception("camera %s: reader thread failed", self.camera_id)
            self._last_error = f"internal error: {exc!r}"
            self._set_state("failed")
            self._call_loop(self._finish)
        finally:
            # A loop closed before the thread ended has nobody left waiting for it.
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._exited.set)

    def _watch(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                reader = open_reader(self.config)
            except SourceOpenError as exc:
                failures = self._retry(str(exc), failures)
                continue
            self._last_frame_at = time.monotonic()
            try:
                outcome, delivered = self._stream(reader)
            finally:
                reader.close()
            if delivered:
                failures = 0
            if outcome == "stopped":
                return
            if outcome == "stalled":
                self._set_state("stalled")
                failures = self._retry(self._last_error or self._stall_error, failures)
            elif not self.config.loop:
                self._end()
                return
            elif not delivered:
                failures = self._retry(f"{redact(self.config.url)}: no frame could be decoded", failures)

    def _stream(self, reader: Reader) -> tuple[Outcome, int]:
        """Pass frames on until the source ends, stalls or the source is stopped."""
        selector = FrameSelector(reader.native_fps, self.config.fps_cap)
        limiter = self._limiter
        if limiter is None or limiter.rate != selector.rate:
            # Kept across the passes of a looping file, so a replay keeps the pace at its seam.
            limiter = self._limiter = RateLimiter(selector.rate)
        delivered = 0
        camera = self.camera_id
        frame_s = 1.0 / (reader.native_fps or selector.rate)
        while not self._stop.is_set():
            index = reader.grab()
            if index is not None and not self._live:
                if self._recording_origin is None:
                    self._recording_origin = time.time()  # the recording's first frame: its time 0
                else:
                    self._recording_t += frame_s
            if index is None:
                if self._live:
                    self._last_error = self._stall_error
                    return "stalled", delivered
                return "ended", delivered
            self._metrics.frames_read.labels(camera).inc()
            if self._live:
                seq, self._live_seq = self._live_seq, self._live_seq + 1
                keep = limiter.admit(time.monotonic())
            else:
                seq, keep = index, selector.keep(index)
            if not keep:
                self._last_frame_at = time.monotonic()
                self._metrics.frames_dropped.labels(camera, "fps_cap").inc()
                continue
            try:
                image = reader.retrieve()
            except BadFrameError as exc:
                self._metrics.bad_frames.labels(camera).inc()
                logger.warning("camera %s: skipped a bad frame: %s", camera, exc)
                if self._live and time.monotonic() - self._last_frame_at > self.config.stall_timeout_s:
                    self._last_error = f"{self._stall_error}; last: {exc}"
                    return "stalled", delivered
                continue
            if not self._live and self.config.realtime:
                if self._stop.wait(limiter.wait_s(time.monotonic())):
                    self._metrics.frames_dropped.labels(camera, "shutdown").inc()  # read, never handed over
                    break
                limiter.admit(time.monotonic())
            self._last_frame_at = time.monotonic()
            if self._state != "streaming":
                self._last_error = None
                self._set_state("streaming")
                self._metrics.camera_up.labels(camera).set(1)
            if not self._deliver(Frame(camera, seq, self._captured_at(), image)):
                self._metrics.frames_dropped.labels(camera, "shutdown").inc()
                break
            delivered += 1
        return "stopped", delivered

    def _captured_at(self) -> float:
        """Now, or on the recording's timeline: where the frame is in the file, from when playback began."""
        if self.config.timeline == "recording" and self._recording_origin is not None:
            return self._recording_origin + self._recording_t
        return time.time()

    def _deliver(self, frame: Frame) -> bool:
        """Hand `frame` to the loop; False when the source was stopped or the loop is gone."""
        if not self.config.lossless:
            return self._call_loop(self._offer, frame)
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            future = asyncio.run_coroutine_threadsafe(self._put_waiting(frame), loop)
        except RuntimeError:
            return False
        while True:
            try:
                future.result(timeout=_POLL_S)
            except TimeoutError:
                if self._stop.is_set() or loop.is_closed():
                    future.cancel()
                    return False
            except CancelledError:
                return False
            else:
                return True

    def _retry(self, reason: str, failures: int) -> int:
        """Record the failure and wait out the backoff; returns the new failure count."""
        camera = self.camera_id
        self._last_error = reason
        self._metrics.camera_up.labels(camera).set(0)
        self._set_state("reconnecting")
        delay = self._backoff.delay(failures)
        logger.warning("camera %s: %s; reconnecting in %.2f s", camera, reason, delay)
        if self._stop.wait(delay):
            return failures
        self._metrics.camera_reconnects.labels(camera).inc()
        return failures + 1

    def _end(self) -> None:
        self._metrics.camera_up.labels(self.camera_id).set(0)
        self._set_state("ended")
        self._call_loop(self._finish)

    def _set_state(self, state: SourceState) -> None:
        if self._stop.is_set() and state not in ("ended", "failed"):
            return
        if state != self._state:
            logger.info("camera %s: %s -> %s", self.camera_id, self._state, state)
            self._state = state

    def _call_loop(self, callback: Callable[..., None], *args: object) -> bool:
        loop = self._loop
        if loop is None or self._stop.is_set():
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop was closed under us: nobody is left to take frames
            self._stop.set()
            return False
        return True


async def open_sources(configs: Sequence[CameraConfig], metrics: EdgeMetrics) -> list[CameraSource]:
    """A started source per camera config (each connects in the background)."""
    sources = [CameraSource(config, metrics) for config in configs]
    for source in sources:
        await source.start()
    return sources


async def stop_sources(
    sources: Sequence[CameraSource], consumers: Sequence[asyncio.Task[None]], deadline: float, metrics: EdgeMetrics
) -> None:
    """Stop every source and let its consumer take the frames already read (each source's queue, then its
    end) until `deadline` (monotonic); consumers still at it then are cancelled, and the frames their
    sources still held are counted as dropped (reason shutdown): a frame read is detected, gated or
    counted as dropped, never none of them."""
    for source in sources:
        await source.stop()
    late: set[asyncio.Task[None]] = set()
    if consumers:
        _, late = await asyncio.wait(consumers, timeout=max(0.0, deadline - time.monotonic()))
    for consumer in late:
        consumer.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    for source in sources:
        if left := source.discard():
            metrics.frames_dropped.labels(source.camera_id, "shutdown").inc(left)
