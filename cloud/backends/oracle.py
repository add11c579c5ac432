"""The `oracle` backend, for simulation only: the scenario's ground truth after a modelled delay.

It answers as a perfect reference detector would, from the `gt.jsonl` the world generator wrote
for each camera, looked up by ("<edge_id>/<camera_id>", frame_seq) and, when that key is not
configured, by (camera_id, frame_seq), with the same decision rule as the `onnx` backend. Many keys
may name the same file (a large simulated fleet shares a few clips): each file is read once.
Each batch takes `delay_ms` plus a uniform jitter in [0, `jitter_ms`] drawn from a seeded
generator, so fleet-scale bandwidth and latency runs need no GPU and repeat exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud.backends.decide import judge, share_inside
from cloud.backends.protocol import BackendStartError
from cloud.convert import BackendResult, CloudDetection, SampleInput

ORACLE_TEXT = "simulation oracle"
GroundTruth = dict[int, list[CloudDetection]]  # frame number -> labelled objects


class OracleBackendConfig(BaseModel):
    """Where each camera's ground truth is, and how long the modelled backend takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["oracle"] = Field(default="oracle", description="Selects the simulation oracle backend.")
    ground_truth: dict[str, Path] = Field(
        default_factory=dict,
        description=(
            "'<edge_id>/<camera_id>' (or camera_id alone, for every edge) -> the gt.jsonl of its clip "
            "(or the clip folder holding gt.jsonl); the edge-qualified key wins."
        ),
    )
    delay_ms: float = Field(default=200.0, ge=0.0, le=600_000.0, description="Modelled inference time per batch.")
    jitter_ms: float = Field(
        default=50.0, ge=0.0, le=600_000.0, description="Upper bound of the uniform random time added to delay_ms."
    )
    seed: int = Field(default=0, description="Seed of the jitter, so runs repeat exactly.")
    match_iou: float = Field(
        default=0.3,
        gt=0.0,
        le=1.0,
        description="IoU with an edge box at which a true object confirms it (full frames).",
    )
    min_share_in_crop: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Share of a true object's box that must lie in a crop to count."
    )
    max_batch_size: int = Field(default=64, ge=1, le=4096, description="Most samples per inference call.")


class OracleBackend:
    """Answers from ground truth, after a seeded, modelled delay."""

    name = "oracle"
    model_name = "ground-truth"

    def __init__(self, config: OracleBackendConfig, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Keep the config; ground truth loads in `start`. `sleep` lets tests record the modelled delays."""
        self._config = config
        self._sleep = sleep
        self._rng = random.Random(config.seed)
        self._truth: dict[str, GroundTruth] | None = None
        self._version = ""

    @property
    def model_version(self) -> str:
        """'sha256:' and 12 hex of the ground-truth files ("unknown" before `start`)."""
        return self._version or "unknown"

    @property
    def max_batch_size(self) -> int:
        """Most samples per `infer` call."""
        return self._config.max_batch_size

    async def start(self) -> None:
        """Read every camera's gt.jsonl (in a thread); again is a no-op."""
        if self._truth is None:
            self._truth = await asyncio.to_thread(self._load)

    def _load(self) -> dict[str, GroundTruth]:
        digest = hashlib.sha256()
        truth: dict[str, GroundTruth] = {}
        by_file: dict[Path, GroundTruth] = {}  # keys sharing a file share one parsed copy
        for key, location in sorted(self._config.ground_truth.items()):
            path = (location / "gt.jsonl" if location.is_dir() else location).resolve()
            if path not in by_file:
                try:
                    text = path.read_text()
                except OSError as exc:
                    raise BackendStartError(
                        f"oracle backend: ground_truth[{key!r}]: cannot read {path}: {exc.strerror or exc}"
                    ) from exc
                digest.update(text.encode())
                by_file[path] = read_ground_truth(text, f"{path}")
            digest.update(f"{key}={path}\n".encode())
            truth[key] = by_file[path]
        self._version = "sha256:" + digest.hexdigest()[:12]
        return truth

    async def infer(self, batch: list[SampleInput], deadline: float | None = None) -> list[BackendResult]:
        """Wait the modelled delay once for the batch, then judge each sample against ground truth."""
        if self._truth is None:
            raise RuntimeError("oracle backend: infer called before start")
        if not batch:
            return []
        delay_ms = self._config.delay_ms + self._rng.uniform(0.0, self._config.jitter_ms)
        await self._sleep(delay_ms / 1000.0)
        return [self._judge(self._truth, sample) for sample in batch]

    def _judge(self, truth: dict[str, GroundTruth], sample: SampleInput) -> BackendResult:
        key = f"{sample.edge_id}/{sample.camera_id}"
        clip = truth.get(key)
        if clip is None:
            key = sample.camera_id
            clip = truth.get(key)
        if clip is None:
            known = ", ".join(sorted(truth)[:10]) or "none"
            more = f" and {len(truth) - 10} more" if len(truth) > 10 else ""
            return _unsure(
                f"{ORACLE_TEXT}: no ground truth for camera {sample.camera_id!r} of edge {sample.edge_id!r} "
                f"(known keys: {known}{more})"
            )
        objects = clip.get(sample.frame_seq)
        if objects is None:
            return _unsure(
                f"{ORACLE_TEXT}: no ground truth for camera {key!r} frame {sample.frame_seq} "
                f"(its clip has {len(clip)} frames)"
            )
        if sample.crop is not None:
            crop = sample.crop
            objects = [o for o in objects if share_inside(o.box, crop) >= self._config.min_share_in_crop]
        result = judge(sample, objects, self._config.match_iou)
        return dataclasses.replace(result, text=ORACLE_TEXT, confidence=1.0)

    async def close(self) -> None:
        """Forget the ground truth."""
        self._truth = None


def read_ground_truth(text: str, source: str) -> GroundTruth:
    """Parse a clip's gt.jsonl: one JSON object per frame, {"frame", "objects": [{"label", "class_id", "box"}]}."""
    frames: GroundTruth = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            frames[int(record["frame"])] = [
                CloudDetection(str(o["label"]), int(o["class_id"]), 1.0, _box(o["box"])) for o in record["objects"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendStartError(f"oracle backend: {source}:{number}: not a ground-truth line ({exc})") from exc
    return frames


def _box(value: object) -> tuple[float, float, float, float]:
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(f"box should be [x1, y1, x2, y2], got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    return (x1, y1, x2, y2)


def _unsure(text: str) -> BackendResult:
    return BackendResult(decision="unsure", detections=[], text=text, confidence=0.0)
