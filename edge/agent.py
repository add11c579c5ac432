"""The edge agent: cameras -> gate -> detect -> mine -> local events or samples up; verdicts and policies down.

Everything runs on one asyncio loop; OpenCV reads run in each camera's own thread, the detector in
one dedicated inference thread, JPEG encoding and gating in the default executor. Detection never
waits on the uplink: samples are handed over without blocking, and the edge's own decision stands
whether or not the cloud answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray

from common.detect import Detection, Detector
from common.files import write_atomic
from common.periodic import PeriodicTask
from common.supervise import spawn
from common.tracing import Tracing, setup_tracing
from edge import convert
from edge.config import EdgeConfig
from edge.events import EventSink, snapshot_jpeg
from edge.gate import FrameGate, GateResult
from edge.health import HealthServer
from edge.metrics import EdgeMetrics
from edge.mine import Miner, MiningContext
from edge.models import ModelStore, ModelUpdater, RunningModel
from edge.outbox import Outbox, OutboxError
from edge.policy.settings import EdgePolicy
from edge.policy.signing import load_public_key
from edge.policy.store import PolicyStore
from edge.questions import HeldFrame, area_share, sample_for
from edge.sources import CameraSource, Frame, stop_sources
from edge.status import StatusBuilder, run_summary
from edge.track import AskRequest, CameraTracker, TrackBook, TrackEvent
from edge.track.book import FrameOutcome
from edge.uplink import UplinkHandlers, make_uplink
from edge.uplink.dispatch import Dispatcher
from protos import policy_pb2, session_pb2, status_pb2, verdict_pb2

logger = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"
DROP_OUTBOX_UNAVAILABLE = "outbox_unavailable"
UPLINK_STOP_S = 5.0  # shutdown: the most of the drain deadline kept for closing the transport
CLOSE_SHARE = 0.25  # ... and at most this share of it
MIN_CLOSE_S = 0.5  # the transport gets this even when the deadline has passed (an offline status to say)
LATENCY_RECORDS = 100_000  # latencies kept for the run summary (the newest)
SELF_TEST_FRAMES = 4  # recent frames a new model is tried on before it runs


class EdgeAgent:
    """One gateway's agent. `run(stop)` until the stop event is set, then an ordered shutdown."""

    def __init__(self, config: EdgeConfig, metrics: EdgeMetrics | None = None, tracing: Tracing | None = None) -> None:
        self.config = config
        self.metrics = metrics or EdgeMetrics()
        self.tracing = tracing or setup_tracing(config.tracing, "edgeglm-edge")
        config.state_dir.mkdir(parents=True, exist_ok=True)
        keys = [config.policy.public_key] if config.policy.public_key else []
        trusted = [load_public_key(path) for path in [*keys, *config.policy.extra_public_keys]]
        self.policies = PolicyStore(
            config.state_dir,
            trusted or None,
            self.metrics,
            edge_id=config.edge_id,
            site_id=config.site_id,
            default=config.policy.initial,
        )
        self.events = EventSink(config.events.path or config.state_dir / "events.jsonl", metrics=self.metrics)
        tracking = config.tracking
        self.tracks: TrackBook[HeldFrame] = TrackBook(
            config.edge_id,
            lost_after_s=tracking.lost_after_s,
            ask_window_s=tracking.ask_window_s,
            max_asks=tracking.max_asks,
            mode=tracking.ask,
        )
        self._trackers: dict[str, CameraTracker] = {}
        self.sources = [CameraSource(camera, self.metrics) for camera in config.cameras]
        self.outbox = Outbox(
            config.outbox.path or config.state_dir / "outbox.sqlite",
            max_bytes=config.outbox.max_bytes,
            max_age_s=config.outbox.max_age_s,
            metrics=self.metrics,
        )
        self._outbox_samples = 0
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect")
        self._detect_queue: asyncio.Queue[tuple[Frame, GateResult]] = asyncio.Queue(config.pipeline.detect_queue_size)
        self._detector: Detector | None = None
        self._detector_model: tuple[str, str] = ("", "")  # (name, version) of `_detector`
        self._gates: dict[str, FrameGate] = {}
        self._miner: Miner | None = None
        # Liveness: a frame got through the gate or a batch through the detector (not frames read).
        self._last_detected = self._last_gated = time.monotonic()
        self._draining = False
        self._outbox_error: str | None = None  # why the last put failed, until one succeeds
        # A failed sweep (a full or failing disk) is logged and counted, and the next one goes on.
        self._sweeper = PeriodicTask(
            "outbox-sweep",
            self._sweep_outbox,
            config.outbox.expire_every_s,
            first_run_now=True,
            failures=self.metrics.outbox_errors,
        )
        # The latest latencies, for the run summary the simulation reads; bounded for a long-lived daemon.
        self._verdict_latencies_ms: deque[float] = deque(maxlen=LATENCY_RECORDS)
        self._local_latencies_ms: deque[float] = deque(maxlen=LATENCY_RECORDS)
        self._round_trips_ms: deque[float] = deque(maxlen=LATENCY_RECORDS)
        self._verdicts_unmatched = 0
        self.status = StatusBuilder(config.edge_id, config.site_id, self.metrics)
        handlers = UplinkHandlers(
            hello=self._hello,
            status=self._heartbeat,
            on_ack=self._on_ack,
            on_verdict=self._on_verdict,
            on_policy=self._on_policy,
            on_cloud_back=self._on_cloud_back,
            on_deferred=self._on_deferred,
        )
        self.uplink = make_uplink(config.uplink, handlers, self.metrics)
        self.events.add_publisher(self.uplink.publish_event)
        self._recent_frames: deque[NDArray[np.uint8]] = deque(maxlen=SELF_TEST_FRAMES)
        self.models = ModelUpdater(
            config.models,
            ModelStore(config.models.dir or config.state_dir / "models"),
            config.detector,
            trusted,
            self.metrics,
            edge_id=config.edge_id,
            configured_version=config.model_version,
            chunks=self.uplink.model_chunks,
            running=lambda: self._detector,
            frames=lambda: list(self._recent_frames),
            swap=self._swap_detector,
        )
        self.dispatcher = Dispatcher(
            self.outbox,
            self.uplink,
            self.policy.uplink,
            self.metrics,
            window=config.outbox.window,
            ack_timeout_s=config.outbox.ack_timeout_s,
            verdict_timeout_s=config.outbox.verdict_timeout_s,
        )
        self.health = HealthServer(
            config.health.host, config.health.port, self.metrics.registry, self._liveness, self._readiness
        )

    @property
    def policy(self) -> EdgePolicy:
        """The policy in force."""
        return self.policies.current

    async def run(self, stop: asyncio.Event) -> None:
        """Start everything, process frames until `stop` is set or every camera has ended, then shut down."""
        self.policies.load()
        await self.outbox.open()
        self._outbox_samples = (await self.outbox.stats()).samples
        self.health.start()
        self._detector = await self.models.load(self._infer_pool)
        self._detector_model = (self.models.running.name, self.models.running.version)
        self._apply(self.policy)
        self.policies.subscribe(self._apply)
        await self.uplink.start()
        background = [
            spawn("dispatch", self.dispatcher.run, self._task_failed),
            spawn("outbox-sweep", self._sweeper.run, self._task_failed),
        ]
        if self.config.models.enabled:
            background.append(spawn("models", self.models.run, self._task_failed))
        for source in self.sources:
            await source.start()
        workers = [
            spawn(f"camera-{s.config.id}", functools.partial(self._camera_loop, s), self._task_failed)
            for s in self.sources
        ]
        detector_task = spawn("detect", self._detect_loop, self._task_failed)
        cameras_done = asyncio.create_task(self._all_ended(workers))
        stop_waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([cameras_done, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        cameras_done.cancel()
        await self._shutdown(workers, detector_task, background)
        stop_waiter.cancel()

    async def _swap_detector(self, detector: Detector, running: RunningModel) -> None:
        """Put a checked model in place: the detect loop takes it (and its name) at its next batch."""
        self._detector, self._detector_model = detector, (running.name, running.version)

    @staticmethod
    async def _all_ended(workers: list[asyncio.Task[None]]) -> None:
        # asyncio.wait, not gather: cancelling this waiter must not cancel the cameras (the shutdown lets
        # them hand over what they read).
        if workers:
            await asyncio.wait(workers)

    def _task_failed(self, name: str, _: BaseException) -> None:
        """A supervised task failed (already logged with its traceback); it is being restarted."""
        self.metrics.task_failures.labels(name).inc()

    async def _sweep_outbox(self) -> None:
        """Drop samples past their age, and keep the outbox size at hand for heartbeats."""
        await self.outbox.expire()
        self._outbox_samples = (await self.outbox.stats()).samples

    async def _drain_outbox(self, deadline: float) -> int:
        """Wait (while the cloud is there) for the outbox to empty; returns what is left in it."""
        left = (await self.outbox.stats()).samples
        while left and self._cloud_reachable() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            left = (await self.outbox.stats()).samples
        return left

    async def _shutdown(
        self,
        workers: list[asyncio.Task[None]],
        detector_task: asyncio.Task[None],
        background: list[asyncio.Task[None]],
    ) -> None:
        """Stop sources, finish queued frames, wait for verdicts, close transports — all within one deadline.

        pipeline.drain_deadline_s bounds the whole of it (the DaemonSet's grace period is that plus a
        margin); the last part of it is kept for closing the uplink.
        """
        self._draining = True
        end = time.monotonic() + self.config.pipeline.drain_deadline_s
        deadline = end - min(UPLINK_STOP_S, CLOSE_SHARE * self.config.pipeline.drain_deadline_s)
        logger.info("shutting down: stopping %d cameras", len(self.sources))
        await stop_sources(self.sources, workers, deadline, self.metrics)
        try:
            await asyncio.wait_for(self._detect_queue.join(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            logger.warning("shutdown deadline: %d frames left undetected", self._detect_queue.qsize())
        detector_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await detector_task
        # Open question windows ask now (the sample survives in the outbox); every live track ends.
        await self._act(self.tracks.end_all())
        left = await self._drain_outbox(deadline)
        if left:
            logger.warning("%d samples stay in the outbox for the next start", left)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        close_s = max(MIN_CLOSE_S, end - time.monotonic())
        try:
            # Bounded: a transport that does not close must not keep the agent from exiting.
            await asyncio.wait_for(self.uplink.stop(), timeout=close_s)
        except TimeoutError:
            logger.warning("uplink did not close within %.1f s; exiting without it", close_s)
        self._outbox_samples = (await self.outbox.stats()).samples
        await self.outbox.close()
        self.events.close()
        self._write_summary()
        self.health.stop()
        self._infer_pool.shutdown(wait=True)
        await asyncio.to_thread(self.tracing.shutdown)  # the spans still batched go out
        logger.info("agent stopped")

    def _write_summary(self) -> None:
        """What this run did, for people and for the simulation's report (state_dir/summary.json)."""
        summary = run_summary(
            self.metrics,
            self.config.edge_id,
            policy_version=self.policy.version,
            samples_unacknowledged=self._outbox_samples,
            verdicts_unmatched=self._verdicts_unmatched,
            latencies_ms={
                "verdict_latency_ms": list(self._verdict_latencies_ms),
                "local_latency_ms": list(self._local_latencies_ms),
                "round_trip_ms": list(self._round_trips_ms),
            },
        )
        write_atomic(self.config.state_dir / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())

    def _apply(self, policy: EdgePolicy) -> None:
        """Hand a newly applied policy to the gate, the miner and the trackers."""
        for gate in self._gates.values():
            gate.update_policy(policy.gate)
        self.dispatcher.update_policy(policy.uplink)
        if self._miner is None:
            self._miner = Miner(
                policy.mining,
                send_every_frame=self.config.pipeline.send_every_frame,
                per_frame_repeats=self.config.tracking.ask == "per_frame",
            )
        else:
            self._miner.update_policy(policy.mining)
        for tracker in self._trackers.values():
            tracker.set_new_track_score(policy.lowest_band)
        self.tracks.policy_version = policy.version
        if self.config.models.enabled:
            self.models.want(policy.model)
        watched = list(policy.mining.watch_list) if policy.mining.watch_list_enabled else []
        self.uplink.announce([camera.id for camera in self.config.cameras], watched)

    def _tracker(self, camera_id: str) -> CameraTracker:
        tracker = self._trackers.get(camera_id)
        if tracker is None:
            tracking = self.config.tracking
            tracker = self._trackers[camera_id] = CameraTracker(
                new_track_score=self.policy.lowest_band,
                match_diou=tracking.match_diou,
                lost_after_s=tracking.lost_after_s,
                frame_rate=tracking.frame_rate,
            )
        return tracker

    async def _camera_loop(self, source: CameraSource) -> None:
        """Frames of one camera through the gate into the detector queue (oldest dropped when full)."""
        loop = asyncio.get_running_loop()
        camera = source.config.id
        gate = self._gates.setdefault(camera, FrameGate(self.policy.gate))
        while True:
            frame = await source.get()
            if frame is None:
                logger.info("camera %s ended", camera)
                return
            try:
                result = await loop.run_in_executor(None, gate.check, frame.image)
            except asyncio.CancelledError:
                self.metrics.frames_dropped.labels(camera, "shutdown").inc()  # cut at the deadline, mid-check
                raise
            if not result.changed:
                self.metrics.frames_gated.labels(camera).inc()
                self._last_gated = time.monotonic()
                await self._act(self.tracks.tick(camera, frame.captured_at))
                continue
            if source.config.lossless:
                # A recording played as fast as it is consumed, or on its own timeline: wait for the
                # detector, lose nothing.
                await self._detect_queue.put((frame, result))
                continue
            if self._detect_queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    dropped, _ = self._detect_queue.get_nowait()
                    self._detect_queue.task_done()
                    self.metrics.frames_dropped.labels(dropped.camera_id, "detect_queue_full").inc()
            self._detect_queue.put_nowait((frame, result))

    async def _detect_loop(self) -> None:
        """Batch what is waiting (up to detect_batch_size, across cameras), detect, decide."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._detect_queue.get()]
            while len(batch) < self.config.pipeline.detect_batch_size and not self._detect_queue.empty():
                batch.append(self._detect_queue.get_nowait())
            # The model is read per batch: a swap (edge.models) takes effect between two batches.
            detector, model = self._detector, self._detector_model
            assert detector is not None
            try:
                images = [frame.image for frame, _ in batch]
                self._recent_frames.append(images[-1])
                started = time.perf_counter()
                results = await loop.run_in_executor(self._infer_pool, detector.detect_batch, images)
                self.metrics.detect_seconds.observe(time.perf_counter() - started)
                for (frame, gate), detections in zip(batch, results, strict=True):
                    self.metrics.frames_detected.labels(frame.camera_id).inc()
                    self.metrics.detections.labels(frame.camera_id).inc(len(detections))
                    await self._decide(frame, gate, detections, model)
                self._last_detected = time.monotonic()
            finally:
                # Whatever happened, these frames are done: a shutdown waiting on the queue must not hang.
                for _ in batch:
                    self._detect_queue.task_done()

    async def _decide(
        self, frame: Frame, gate: GateResult, detections: list[Detection], model: tuple[str, str] = ("", "")
    ) -> None:
        """Track and mine one frame: sure objects become events at once, hard ones questions for the cloud."""
        assert self._miner is not None
        tracked = self._tracker(frame.camera_id).update(detections, frame.captured_at)
        context = MiningContext(
            frame.camera_id, frame.seq, gate.motion, detections, frame.captured_at, area_share(gate, frame)
        )
        decision = self._miner.decide(context)
        held = HeldFrame(frame, detections, gate, model)
        outcome = self.tracks.observe(
            frame.camera_id,
            frame.seq,
            frame.captured_at,
            tracked,
            decision,
            self._miner.camera_policy(frame.camera_id),
            held,
            gate.changed_box,
            (int(frame.image.shape[1]), int(frame.image.shape[0])),
        )
        self._local_latencies_ms.append(round(max(0.0, time.time() - frame.captured_at) * 1000, 2))
        if not self._cloud_reachable():
            self.metrics.decisions_without_cloud.inc()
        held_back = decision.held_back or outcome.held_back
        if held_back is not None:
            self.metrics.samples_dropped.labels(held_back).inc()
        await self._act(outcome, held)
        if self.tracks.mode == "per_frame" and decision.kind == "suspicious" and decision.reason is not None:
            ask = AskRequest(
                frame.camera_id, None, held, tuple(detections), decision.reason, decision.detail, decision.priority
            )
            if await self._send(ask):
                self.tracks.sent_frame(frame.camera_id, frame.seq, tracked)

    async def _act(self, outcome: FrameOutcome[HeldFrame], current: HeldFrame | None = None) -> None:
        """Emit the events of a frame (a snapshot with each new object on it) and send its questions."""
        for event in outcome.events:
            snapshot = None
            if current is not None and self._wants_snapshot(event, current):
                snapshot = await self._snapshot(current.frame, event)
            self.events.emit(event, snapshot)
        for ask in outcome.asks:
            if await self._send(ask):
                self.tracks.asked(ask, ask.frame.frame.captured_at)

    def _wants_snapshot(self, event: TrackEvent, current: HeldFrame) -> bool:
        """A new object, or one the edge relabelled, on the frame at hand (a verdict's frame is gone)."""
        if not self.config.events.snapshots or event.frame_seq != current.frame.seq:
            return False
        return event.kind == "new" or (event.kind == "update" and event.payload["source"] == "edge")

    async def _snapshot(self, frame: Frame, event: TrackEvent) -> bytes | None:
        """A JPEG of the object's padded box on its frame, off the loop."""
        return await asyncio.get_running_loop().run_in_executor(None, snapshot_jpeg, frame.image, event)

    async def _send(self, ask: AskRequest[HeldFrame]) -> bool:
        """Encode the frame (or crop) as the policy says and put the sample in the outbox; whether it was kept.

        Once counted as mined, a sample ends in the outbox or counted as dropped, never neither: a shutdown
        that cancels the caller half-way waits for the store to finish (one encode and one insert).
        """
        self.metrics.mined.labels(ask.reason).inc()
        store = asyncio.ensure_future(self._store(ask))
        try:
            return await asyncio.shield(store)
        except asyncio.CancelledError:
            await asyncio.wait([store])
            raise

    async def _store(self, ask: AskRequest[HeldFrame]) -> bool:
        sample = await asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(
                sample_for,
                ask,
                self.policy,
                edge_id=self.config.edge_id,
                # The model that found the detections, not the one running now (a swap may come in between).
                model_name=ask.frame.model[0] if any(ask.frame.model) else self.models.running.name,
                model_version=ask.frame.model[1] if any(ask.frame.model) else self.models.running.version,
            ),
        )
        # On disk before anything is sent: from here on the sample survives crashes and outages.
        try:
            evicted = await self.outbox.put(sample)
        except OutboxError as err:
            # Detection and local events go on; this sample cannot be kept, so it is dropped, counted.
            self.metrics.samples_dropped.labels(DROP_OUTBOX_UNAVAILABLE).inc()
            self.metrics.outbox_errors.inc()
            if self._outbox_error is None:
                logger.error("outbox unavailable, samples are dropped until it works again: %s", err)
            self._outbox_error = str(err)
            return False
        if self._outbox_error is not None:
            logger.info("outbox works again")
            self._outbox_error = None
        self._outbox_samples += 1 - len(evicted)
        self.dispatcher.notify()
        if self.tracing.enabled:
            self.tracing.root(
                sample.trace_id,
                "edge.sample",
                round(convert.seconds_of(sample.captured_at) * 1e9),
                time.time_ns(),
                {
                    "edgeglm.sample_id": sample.sample_id,
                    "edgeglm.edge_id": sample.edge_id,
                    "edgeglm.camera_id": sample.camera_id,
                    "edgeglm.track_id": sample.track_id,
                    "edgeglm.mined_reason": ask.reason,
                    "edgeglm.bytes": sample.ByteSize(),
                },
            )
        return True

    def _hello(self) -> session_pb2.Hello:
        return session_pb2.Hello(
            edge_id=self.config.edge_id,
            site_id=self.config.site_id,
            model_name=self.models.running.name,
            model_version=self.models.running.version,
            policy_version=self.policy.version,
            agent_version=AGENT_VERSION,
            capabilities=["crop", "full_frame", *(["model_update"] if self.config.models.enabled else [])],
        )

    def _heartbeat(self) -> status_pb2.EdgeStatus:
        return self.status.build(
            state=self._state(),
            policy_version=self.policy.version,
            model=(self.models.running.name, self.models.running.version),
            outbox_samples=self._outbox_samples,
            cameras=self.sources,
        )

    # The transport is made before the dispatcher that uses it; these hand what comes down to the dispatcher.
    async def _on_ack(self, ack: session_pb2.Ack) -> None:
        await self.dispatcher.on_ack(ack)

    def _on_cloud_back(self) -> None:
        self.dispatcher.cloud_back()

    def _on_deferred(self, sample_id: str, after_s: float, reason: str) -> None:
        self.dispatcher.deferred(sample_id, after_s, reason)

    async def _on_verdict(self, verdict: verdict_pb2.Verdict) -> None:
        """The sample leaves the outbox; confirmed objects become events marked as the cloud's."""
        summary = convert.verdict_summary(verdict)
        self.metrics.verdicts.labels(summary.decision).inc()
        answered = await self.dispatcher.on_verdict(verdict.sample_id)
        if answered is None:  # a second verdict for one sample (a resend crossed the first answer)
            self._verdicts_unmatched += 1
            return
        self._outbox_samples = max(0, self._outbox_samples - 1)
        self.metrics.cloud_round_trip.observe(answered.round_trip_s)
        self._round_trips_ms.append(round(answered.round_trip_s * 1000, 2))
        sample = answered.item.sample()
        if self.tracing.enabled:
            now_ns = time.time_ns()
            self.tracing.span(
                sample.trace_id,
                "edge.round_trip",
                now_ns - round(answered.round_trip_s * 1e9),
                now_ns,
                {"edgeglm.sample_id": sample.sample_id, "edgeglm.decision": summary.decision},
            )
        captured_at = convert.seconds_of(sample.captured_at)
        latency_s = max(0.0, time.time() - captured_at)
        self.metrics.verdict_latency.observe(latency_s)
        self._verdict_latencies_ms.append(round(latency_s * 1000, 2))
        asked_about = convert.detection_from_pb(sample.detections[0]) if sample.detections else None
        events = self.tracks.apply_verdict(
            sample.camera_id,
            sample.track_id,
            summary,
            frame_seq=sample.frame_seq,
            captured_at=captured_at,
            asked_about=asked_about,
        )
        for event in events:
            self.events.emit(event)

    async def _on_policy(self, signed: policy_pb2.SignedPolicy) -> None:
        self.policies.offer(signed)

    def _cloud_reachable(self) -> bool:
        """gRPC: the Session stream is up. MQTT: the broker is, and a cloud bridge says it is online."""
        return self.uplink.cloud_reachable

    def _state(self) -> str:
        if self._draining:
            return "draining"
        if self._detector is None:
            return "starting"
        if self._outbox_error is not None or self.dispatcher.outbox_failing:
            return "degraded"
        return "online" if self._cloud_reachable() else "autonomous"

    def _liveness(self) -> tuple[bool, str]:
        now, limit = time.monotonic(), self.config.health.liveness_timeout_s
        if not self._detect_queue.empty() and now - self._last_detected > limit:
            stuck = now - self._last_detected
            return False, f"{self._detect_queue.qsize()} frames wait and no detection finished for {stuck:.0f} s"
        idle = now - max(self._last_detected, self._last_gated)
        if idle > limit:
            return False, f"no frame detected or gated for {idle:.0f} s"
        return True, "frames detected"

    def _readiness(self) -> tuple[bool, str, list[str]]:
        state = self._state()
        reasons = []
        if self._detector is None:
            reasons.append("detector not loaded")
        if not self._cloud_reachable():
            reasons.append(f"cloud unreachable ({self.uplink.last_error or 'no cloud answering'})")
        outbox_ok = self._outbox_error is None and not self.dispatcher.outbox_failing
        if not outbox_ok:
            reasons.append(f"outbox unavailable, samples dropped ({self._outbox_error or 'reads fail'})")
        cloud_ok = self._cloud_reachable() or self.config.pipeline.autonomous_ready
        ready = self._detector is not None and cloud_ok and outbox_ok
        return ready, state, reasons
