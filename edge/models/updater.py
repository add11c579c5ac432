"""Following the model the policy names: fetch, verify, self-test, swap; refuse a bad file, keep the old.

One task (`run`) does it, apart from detection: downloads, hashing, loading the new session and the
self-test all happen while the running model keeps detecting in its own thread. Only the last step
touches the pipeline: `swap` hands the new detector to the agent, which takes it between two batches
(no frame is dropped or detected twice). The model's state is saved before the swap, so a restart
runs the model that was running, and the previous model stays on disk: a policy that names it again
(a rollback) swaps it back without a download.

A refused file (see `edge.models.verify`) is logged with what was wrong, counted in
``edgeglm_edge_model_updates{outcome=<reason>}``, remembered (its version and hash are not fetched
again until a policy names another file) and the running model goes on. A download that fails is
tried again with capped, jittered backoff, resuming its ``.part`` file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from numpy.typing import NDArray

from common.detect import Detector, DetectorConfig, DetectorError
from common.manifest import ModelManifest, file_digest
from edge.metrics import EdgeMetrics
from edge.models.config import ModelUpdateConfig
from edge.models.fetch import ChunkSource, FetchError, ModelRefusedError, fetch
from edge.models.store import InstalledModel, ModelStore
from edge.models.verify import check_file, check_manifest, load_candidate, self_test
from protos.policy_settings import ModelRef

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunningModel:
    """The model the detector runs, as Hello, heartbeats and samples report it."""

    name: str
    version: str
    sha256: str


Swap = Callable[[Detector, RunningModel], Awaitable[None]]
# No policy applied yet: nothing is wanted, whatever runs stays.
_UNSET: Any = object()


class ModelUpdater:
    """Brings the detector to the model the newest policy names."""

    def __init__(
        self,
        config: ModelUpdateConfig,
        store: ModelStore,
        detector_config: DetectorConfig,
        trusted: Sequence[Ed25519PublicKey],
        metrics: EdgeMetrics,
        *,
        edge_id: str,
        configured_version: str,
        chunks: ChunkSource,
        running: Callable[[], Detector | None],
        frames: Callable[[], list[NDArray[np.uint8]]],
        swap: Swap,
    ) -> None:
        """`running` gives the detector in use, `frames` a few recent camera frames for the self-test,
        `swap` puts a checked detector in place; `chunks` streams FetchModel from the uplink."""
        self._config = config
        self.store = store
        self._detector_config = detector_config
        self._trusted = list(trusted)
        self._metrics = metrics
        self._edge_id = edge_id
        self._configured_version = configured_version
        self._chunks = chunks
        self._running_detector = running
        self._frames = frames
        self._swap = swap
        self._wanted: ModelRef | None = _UNSET
        self._changed = asyncio.Event()
        self._download_of: tuple[str, str] = ("", "")  # (version, sha256) of the download timed in _download_s
        self._download_s = 0.0
        self._revert_failed = False  # the configured model could not be loaded again: the fetched one runs on
        self.running = RunningModel(detector_config.model_path.stem, "", "")

    def startup(self) -> DetectorConfig:
        """The detector config to start with: the fetched model that ran last when it is intact, else the
        configured one. Sets `running` to match."""
        current = self.store.current
        if current is not None and self.store.intact(current):
            self.running = RunningModel(current.name, current.version, current.sha256)
            return self._detector_config.model_copy(update={"model_path": self.store.path(current)})
        if current is not None:
            logger.error(
                "model %s %s: its file is missing or damaged; running the configured model",
                current.name,
                current.version,
            )
            self.store.forget_current()
        self.running = self._configured()
        return self._detector_config

    async def load(self, pool: Executor) -> Detector:
        """The detector to start with, loaded in `pool`: the fetched model that ran last, or the configured
        one when there is none or it cannot be loaded."""
        loop = asyncio.get_running_loop()
        config = self.startup()
        try:
            return await loop.run_in_executor(pool, Detector, config)
        except DetectorError as err:
            if config is self._detector_config:
                raise
            logger.error("%s; running the configured model %s instead", err, self._detector_config.model_path)
            self.store.forget_current()
            self.running = self._configured()
            return await loop.run_in_executor(pool, Detector, self._detector_config)

    def _configured(self) -> RunningModel:
        """The configured model as Hello and heartbeats report it."""
        path = self._detector_config.model_path
        sha256 = file_digest(path)[0] if path.is_file() else ""
        return RunningModel(path.stem, self._configured_version, sha256)

    def want(self, ref: ModelRef | None) -> None:
        """The newest policy names `ref`; None: it names none, so the configured model runs (a fetched model
        that runs is swapped back to it, and kept for a rollback)."""
        if ref is _UNSET or ref != self._wanted:
            self._wanted = ref
            self._changed.set()

    def _settled(self, ref: ModelRef | None) -> bool:
        if ref is _UNSET:
            return True
        if ref is None:
            return self.store.current is None or self._revert_failed
        if (self.running.version, self.running.sha256) == (ref.version, ref.sha256):
            return True
        return self.store.refusal(ref) is not None

    async def run(self) -> None:
        """Update whenever a policy names another model, until cancelled."""
        backoff = self._config.retry_initial_s
        while True:
            ref = self._wanted
            if self._settled(ref):
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            if ref is None:
                await self._revert()
                continue
            try:
                await self.update(ref)
                backoff = self._config.retry_initial_s
                continue
            except FetchError as err:
                self._metrics.model_updates.labels("download_failed").inc()
                logger.warning("%s; trying again in %.0f s", err, backoff)
            except ModelRefusedError as err:
                self._metrics.model_updates.labels(err.reason).inc()
                logger.error(
                    "model %s %s refused (%s): %s; the running model goes on", ref.name, ref.version, err.reason, err
                )
                self.store.refuse(ref, err.reason)
                self.store.discard(ref)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self._config.retry_max_s)

    async def update(self, ref: ModelRef) -> None:
        """Fetch (or find on disk), verify, self-test and swap in `ref`'s model; raises when it cannot."""
        running = self._running_detector()
        if running is None:
            raise FetchError(f"model {ref.name} {ref.version}: the detector has not started yet")
        started = time.monotonic()
        installed, manifest, kept = await self._obtain(ref)
        path = self.store.path(installed)
        candidate = await asyncio.to_thread(load_candidate, path, self._detector_config, manifest, running)
        result = await asyncio.to_thread(
            self_test, candidate, running, self._frames(), self._config.self_test_runs, self._config.max_latency_ratio
        )
        previous = self.running
        self.store.install(installed)
        new = RunningModel(ref.name, ref.version, ref.sha256)
        await self._swap(candidate, new)
        self.running = new
        self._metrics.model_updates.labels("rolled_back" if kept else "swapped").inc()
        self._metrics.model_swap_seconds.set(time.monotonic() - started)
        logger.info(
            "model %s %s is running (was %s %s): self-test on %d frames %.1f ms vs %.1f ms",
            new.name,
            new.version,
            previous.name,
            previous.version or "(configured)",
            result.frames,
            result.candidate_ms,
            result.running_ms,
        )

    async def _revert(self) -> None:
        """Swap the configured model back in (the policy names no model any more); the fetched one is kept."""
        running = self._running_detector()
        if running is None:
            return
        previous = self.running
        try:
            candidate = await asyncio.to_thread(Detector, self._detector_config)
            await asyncio.to_thread(self_test, candidate, running, self._frames(), 1, float("inf"))
        except (DetectorError, ModelRefusedError) as err:
            self._revert_failed = True
            self._metrics.model_updates.labels("revert_failed").inc()
            logger.error(
                "the policy names no model, but the configured one fails (%s); %s %s runs on",
                err,
                previous.name,
                previous.version,
            )
            return
        self._revert_failed = False
        self.store.revert()
        new = self._configured()
        await self._swap(candidate, new)
        self.running = new
        self._metrics.model_updates.labels("reverted").inc()
        logger.info(
            "the policy names no model: the configured %s runs again (was %s %s)",
            self._detector_config.model_path,
            previous.name,
            previous.version,
        )

    async def _obtain(self, ref: ModelRef) -> tuple[InstalledModel, ModelManifest, bool]:
        """`ref`'s file on disk, its checked manifest, and whether it was kept from before (a rollback)
        rather than downloaded."""
        found = self.store.find(ref)
        if found is not None:
            data = await asyncio.to_thread(self.store.manifest_path(ref).read_bytes)
            self._metrics.model_download_seconds.set(0.0)
            return found, check_manifest(ref, data, self._trusted, str(self.store.manifest_path(ref))), True
        part = self.store.part_path(ref)
        if self._download_of != (ref.version, ref.sha256):  # a new download: its attempts add up from here
            self._download_of, self._download_s = (ref.version, ref.sha256), 0.0
        started = time.monotonic()
        try:
            data = await asyncio.wait_for(
                fetch(ref, part, self._edge_id, self._chunks, self._config.download_timeout_s, self._count_bytes),
                self._config.download_timeout_s,
            )
        except TimeoutError as err:
            raise FetchError(
                f"model {ref.name} {ref.version}: download took longer than {self._config.download_timeout_s:g} s"
            ) from err
        finally:
            self._download_s += time.monotonic() - started
        self._metrics.model_download_seconds.set(self._download_s)
        sha256, size = await asyncio.to_thread(file_digest, part)
        check_file(ref, part, sha256, size)
        manifest = check_manifest(ref, data, self._trusted, ref.uri)
        await asyncio.to_thread(self.store.manifest_path(ref).write_bytes, data)
        return self.store.adopt(ref, part), manifest, False

    def _count_bytes(self, count: int) -> None:
        self._metrics.model_download_bytes.inc(count)
