"""One `train-edge` run: mix, fine-tune, export, score both models, decide, publish when promoted, report.

Two halves, so each can run alone: `train_candidate` needs ultralytics (the training environment);
`judge_and_publish` needs only the edge runtime and the registry, so it is tested without
ultralytics on real ONNX models. Every step's wall time goes into the report.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.models.registry import ModelRegistry
from cloud.models.rollout import RolloutError, fleet_model
from cloud.retrain.config import RetrainConfig
from cloud.retrain.evaluate import HELD_OUT, RetrainDataError, check_field_dataset, compare
from cloud.retrain.mix import build_mix
from cloud.retrain.promote import RetrainReport, decide, write_report
from cloud.retrain.publish import publish_candidate, utc_now
from cloud.retrain.train import run_fine_tune
from common.manifest import describe_model, file_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurrentModel:
    """The model a candidate must beat: its file, registry version ('' if none) and classes."""

    path: Path
    version: str
    classes: list[str]

    def to_json(self) -> dict[str, Any]:
        """For the report."""
        sha256, size = file_digest(self.path)
        return {"path": str(self.path), "version": self.version, "sha256": sha256, "size_bytes": size}


@dataclass(frozen=True)
class Publisher:
    """Where a promoted candidate goes, under which name and version, signed with which key."""

    registry: ModelRegistry
    key: Ed25519PrivateKey
    name: str
    version: str


@dataclass(frozen=True)
class Candidate:
    """A trained and exported candidate, what it was trained on, and how long each step took."""

    onnx: Path
    training: dict[str, Any]
    timings_s: dict[str, float]
    weights: Path | None = None


def current_model(path: Path | None, version: str, registry: ModelRegistry | None, name: str) -> CurrentModel:
    """The model to beat: the one the fleet runs (the registry's promoted rollout, `cloud.models.rollout.
    fleet_model`); `path` (known as `version`, the edges' configured model) while no rollout reached the
    fleet. A candidate published but never promoted, or rolled back, is not the current model."""
    try:
        running = fleet_model(registry) if registry is not None else None
    except RolloutError as err:
        raise RetrainDataError(str(err)) from err
    if registry is not None and running is not None and running.name == name:
        published = registry.get(running.name, running.version)
        path, version = published.path, published.manifest.version
    if path is None:
        where = f"no rollout in {registry.root} reached the fleet" if registry is not None else "no registry given"
        raise RetrainDataError(f"no current model: {where}; give --current (e.g. sim/models/edge.onnx)")
    # describe_model loads it with the edge runtime: a file the edge could not run stops here.
    classes = describe_model(path, name=name, version=version or "current").classes
    return CurrentModel(path, version, classes)


def start_weights(weights: Path, weights_dir: Path | None, current: CurrentModel) -> Path:
    """The current model's own weights when a promoted run kept them (weights_dir/<version>.pt), else `weights`."""
    kept = weights_dir / f"{current.version}.pt" if weights_dir is not None and current.version else None
    return kept if kept is not None and kept.is_file() else weights


def keep_weights(candidate: Candidate, weights_dir: Path, version: str) -> Path:
    """Keep a promoted candidate's weights as weights_dir/<version>.pt: the next fine-tune starts from them."""
    if candidate.weights is None:
        raise RetrainDataError(f"candidate {candidate.onnx} has no weights to keep")
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / f"{version}.pt"
    partial = weights_dir / f".{version}.pt.part"
    shutil.copyfile(candidate.weights, partial)
    partial.replace(target)
    return target


@contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the wall time of a step under `step` and log it."""
    started = time.monotonic()
    yield
    timings[step] = time.monotonic() - started
    logger.info("train-edge: %s took %.1f s", step, timings[step])


def check_held_out(field: Path, current: CurrentModel, config: RetrainConfig) -> None:
    """Refuse before training when the held-out field split could not judge a candidate."""
    check_field_dataset(field, current.classes, HELD_OUT)
    held_out = len(list((field / "images" / HELD_OUT).glob("*.jpg")))
    if held_out < config.rule.min_field_images:
        raise RetrainDataError(
            f"{field}: images/{HELD_OUT} holds {held_out} images, fewer than min_field_images "
            f"{config.rule.min_field_images}; collect more hard samples (or export with a larger --val-share)"
        )


def train_candidate(
    weights: Path,
    current: CurrentModel,
    field: Path,
    base: Path,
    config: RetrainConfig,
    work: Path,
    train_python: Path | None = None,
) -> Candidate:
    """Mix the field training split with the base sample, fine-tune `weights` on it and export ONNX (in
    the training environment's Python `train_python`; default: this one)."""
    timings: dict[str, float] = {}
    settings = config.fine_tune
    with timed(timings, "mix"):
        mix = build_mix(field, base, work / "mix", current.classes, settings)
    logger.info(
        "train-edge: %d field images x%d and %d base images", mix.field_images, mix.field_repeat, mix.base_images
    )
    tuned = run_fine_tune(weights, work / "mix" / "data.yaml", work, settings, train_python)
    timings["fine_tune"], timings["export"] = tuned.fine_tune_s, tuned.export_s
    logger.info("train-edge: fine-tune %.1f s, export %.1f s", tuned.fine_tune_s, tuned.export_s)
    start = {"path": str(weights.resolve()), "sha256": file_digest(weights)[0]}
    training = {**mix.to_json(), "fine_tune": settings.model_dump(mode="json"), "start_weights": start}
    return Candidate(tuned.onnx, training, timings, tuned.weights)


def judge_and_publish(
    current: CurrentModel,
    candidate: Candidate,
    field: Path,
    base: Path,
    config: RetrainConfig,
    work: Path,
    publisher: Publisher | None,
    now: datetime | None = None,
) -> RetrainReport:
    """Score both models, apply the rule, publish a promoted candidate (when `publisher` is given), and
    write report.json and report.md into `work`."""
    timings = dict(candidate.timings_s)
    with timed(timings, "evaluate"):
        comparison = compare(current.path, candidate.onnx, field, base, config, work)
    decision = decide(config.rule, comparison)
    sha256, size = file_digest(candidate.onnx)
    report = RetrainReport(
        rule=config.rule,
        comparison=comparison,
        decision=decision,
        current=current.to_json(),
        candidate={"path": str(candidate.onnx), "sha256": sha256, "size_bytes": size},
        training=candidate.training,
        timings_s=timings,
    )
    if decision.promote and publisher is not None:
        published = publish_candidate(
            publisher.registry,
            candidate.onnx,
            publisher.key,
            name=publisher.name,
            version=publisher.version,
            parent=current.version,
            metrics=report.metrics(),
            training=candidate.training,
            created_at=now or utc_now(),
        )
        report.published = {
            "uri": published.uri,
            "path": str(published.path),
            "sha256": published.manifest.sha256,
            "key_id": published.signed.key_id,
        }
    write_report(report, work)
    return report
