"""Checks of a downloaded model before it is loaded, and of the loaded model before it runs on frames.

In order, each refusal with its own metric reason:
1. ``size`` and ``hash``: the file is the one the signed policy names (its size and SHA-256).
2. ``manifest`` and ``signature``: the manifest parses, is signed by a key this edge trusts (the
   policy keys), and names the same model, version, hash and size as the policy.
3. ``not_detector``: ONNX Runtime loads it in a fresh session and the detector runtime accepts it
   (one detection output of a known layout: a segmentation, pose or classification export is refused).
4. ``classes`` and ``input``: its metadata says what the manifest says, and it knows every class the
   running model knows (policies, watch lists and the cloud's labels name them).
5. ``self_test``: it runs on frames this edge stored, and ``latency``: its median time on them is at
   most `max_latency_ratio` times the running model's, timed side by side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from numpy.typing import NDArray

from common.detect import Detector, DetectorConfig, DetectorError
from common.manifest import ManifestError, ModelManifest, parse_manifest
from common.signing import SignatureError
from edge.models.fetch import ModelRefusedError
from protos.policy_settings import ModelRef

_BLANK_FRAME_HW = (480, 640)


def check_file(ref: ModelRef, path: Path, sha256: str, size: int) -> None:
    """Refuse a file whose size or hash is not the policy's."""
    if size != ref.size_bytes:
        raise ModelRefusedError("size", f"{path}: {size} bytes, the policy says {ref.size_bytes}")
    if sha256 != ref.sha256:
        raise ModelRefusedError("hash", f"{path}: sha256 {sha256}, the policy says {ref.sha256} (corrupt or altered)")


def check_manifest(ref: ModelRef, data: bytes, trusted: Sequence[Ed25519PublicKey], where: str) -> ModelManifest:
    """The manifest in `data`, once it verifies and agrees with the policy's ModelRef."""
    try:
        signed = parse_manifest(data, where)
    except ManifestError as err:
        raise ModelRefusedError("manifest", str(err)) from err
    if trusted:
        try:
            manifest = signed.verify(trusted)
        except SignatureError as err:
            raise ModelRefusedError("signature", f"{where}: {err}") from err
    else:
        manifest = signed.manifest  # no policy key configured: policies are not verified either
    said = (manifest.name, manifest.version, manifest.sha256, manifest.size_bytes)
    wanted = (ref.name, ref.version, ref.sha256, ref.size_bytes)
    if said != wanted:
        raise ModelRefusedError(
            "manifest",
            f"{where}: the manifest is for {said[:2]} ({said[2][:12]}..., {said[3]} bytes), the policy "
            f"names {wanted[:2]} ({wanted[2][:12]}..., {wanted[3]} bytes)",
        )
    return manifest


def load_candidate(path: Path, config: DetectorConfig, manifest: ModelManifest, running: Detector) -> Detector:
    """The model in a fresh ONNX Runtime session, once it is a detector that fits the manifest and the fleet."""
    try:
        candidate = Detector(config.model_copy(update={"model_path": path}))
    except DetectorError as err:
        raise ModelRefusedError("not_detector", str(err)) from err
    names = candidate.names
    listed = [names.get(index) for index in range(len(names))]
    if listed != manifest.classes:
        raise ModelRefusedError("classes", f"{path}: its metadata names {listed}, its manifest {manifest.classes}")
    missing = sorted(set(running.names.values()) - set(names.values()))
    if missing:
        raise ModelRefusedError(
            "classes", f"{path}: knows no {', '.join(missing)}, which the running model detects and policies name"
        )
    if tuple(candidate.input_size) != tuple(manifest.input_size):
        raise ModelRefusedError(
            "input", f"{path}: input {candidate.input_size}, its manifest says {tuple(manifest.input_size)}"
        )
    return candidate


@dataclass(frozen=True, slots=True)
class SelfTest:
    """Side-by-side timing of the candidate and the running model on the same frames."""

    frames: int
    candidate_ms: float
    running_ms: float

    @property
    def ratio(self) -> float:
        """Candidate time over running time."""
        return self.candidate_ms / max(self.running_ms, 1e-6)


def self_test(
    candidate: Detector, running: Detector, frames: Sequence[NDArray[np.uint8]], runs: int, max_ratio: float
) -> SelfTest:
    """Run both models on `frames` (a blank frame when the edge has none yet), alternately, `runs` times."""
    batch = list(frames) or [np.zeros((*_BLANK_FRAME_HW, 3), dtype=np.uint8)]
    candidate_times: list[float] = []
    running_times: list[float] = []
    for _ in range(runs):
        for detector, times in ((candidate, candidate_times), (running, running_times)):
            started = time.perf_counter()
            try:
                detector.detect_batch(batch)
            except DetectorError as err:
                if detector is running:
                    raise
                raise ModelRefusedError("self_test", f"{err} (on {len(batch)} stored frames)") from err
            times.append((time.perf_counter() - started) * 1000)
    result = SelfTest(len(batch), statistics.median(candidate_times), statistics.median(running_times))
    if result.ratio > max_ratio:
        raise ModelRefusedError(
            "latency",
            f"model takes {result.candidate_ms:.1f} ms on {result.frames} frames, the running one "
            f"{result.running_ms:.1f} ms: {result.ratio:.1f}x, above the {max_ratio:g}x bound "
            "(models.max_latency_ratio)",
        )
    return result
