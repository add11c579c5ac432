"""`edgeglm-cloud train-edge` end to end, behind the command line: inputs checked before the long part.

Everything that can be wrong without training (the signing key, the current model, the field
export's classes and held-out split, the base set) is checked first, so a bad run fails in seconds
with the reason instead of after the fine-tune.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cloud.models.registry import ModelRegistry
from cloud.retrain.config import RetrainConfig
from cloud.retrain.evaluate import RetrainDataError
from cloud.retrain.promote import RetrainReport
from cloud.retrain.run import (
    Publisher,
    check_held_out,
    current_model,
    judge_and_publish,
    keep_weights,
    start_weights,
    train_candidate,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainEdgeRequest:
    """Where everything is for one run, and the settings it decides with."""

    field: Path
    out: Path
    weights: Path
    config: RetrainConfig
    current: Path | None = None
    current_version: str = ""
    base: Path | None = None
    base_seed: int = 0
    registry: Path | None = None
    signing_key: Path | None = None
    name: str = "edge"
    version: str = ""
    publish: bool = True
    train_python: Path | None = None
    weights_dir: Path | None = None


def _publisher(request: TrainEdgeRequest, registry: ModelRegistry | None, now: datetime) -> Publisher | None:
    """Who publishes a promoted candidate; None when the run only reports."""
    from cloud.policy.signing import SigningKeyError, load_private_key
    from cloud.retrain.publish import default_version

    if not request.publish or registry is None:
        return None
    if request.signing_key is None:
        raise SigningKeyError("publishing needs the cloud's signing key: give --signing-key or --config")
    key = load_private_key(request.signing_key)
    return Publisher(registry, key, request.name, request.version or default_version(now))


def base_dataset(base: Path | None, seed: int, config: RetrainConfig) -> Path:
    """The base set with its training split and the split both models are scored on (generated from
    `seed` into the cache when `base` is None)."""
    from sim.eval.detector import ensure_dataset

    folder = ensure_dataset(base, seed, "train")
    return ensure_dataset(folder if base is not None else None, seed, config.base_split)


def train_edge(request: TrainEdgeRequest, now: datetime) -> RetrainReport:
    """Check the inputs, fine-tune, score, decide, publish a promoted candidate, and write the report."""
    registry = ModelRegistry(request.registry) if request.registry is not None else None
    publisher = _publisher(request, registry, now)
    current = current_model(request.current, request.current_version, registry, request.name)
    check_held_out(request.field, current, request.config)
    weights = start_weights(request.weights, request.weights_dir, current)
    if not weights.is_file():
        raise RetrainDataError(f"{weights}: no starting weights; make them with `make edge-weights` or give --weights")
    base = base_dataset(request.base, request.base_seed, request.config)
    logger.info("train-edge: current model %s (version %s), base set %s", current.path, current.version or "-", base)
    candidate = train_candidate(
        weights, current, request.field, base, request.config, request.out, request.train_python
    )
    report = judge_and_publish(current, candidate, request.field, base, request.config, request.out, publisher, now)
    if report.published is not None and publisher is not None and request.weights_dir is not None:
        kept = keep_weights(candidate, request.weights_dir, publisher.version)
        logger.info("train-edge: kept the promoted weights as %s", kept)
    return report
