"""What the model rollout tests share: publishing a model, the signing key, an agent running until told."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.models.registry import ModelRegistry, PublishedModel
from common.manifest import describe_model
from edge.agent import EdgeAgent
from edge.status import counter_total
from tests.helpers.model_files import NAME
from tests.helpers.policy_keys import generate_keypair, load_private_key
from tests.helpers.wait import wait_until

WAIT_S = 60.0


def publish(registry: ModelRegistry, path: Path, version: str, key: Ed25519PrivateKey) -> PublishedModel:
    """Publish `path` as version `version` of the test model, signed with `key`."""
    return registry.publish(path, describe_model(path, name=NAME, version=version, parent="1"), key)


def signing_key(tmp_path: Path) -> Ed25519PrivateKey:
    """A fresh policy signing key pair under tmp_path/keys (the cloud and the edges find it there)."""
    private, _ = generate_keypair(tmp_path / "keys", "policy-signing")
    return load_private_key(private)


@contextlib.asynccontextmanager
async def running(agent: EdgeAgent) -> AsyncIterator[EdgeAgent]:
    """The agent running (from its first detection) until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(lambda: counter_total(agent.metrics.frames_detected) > 0 or task.done(), "first detections")
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_S)


def outcome(agent: EdgeAgent, name: str) -> float:
    """edgeglm_edge_model_updates of one outcome."""
    value: float = agent.metrics.model_updates.labels(name)._value.get()
    return value


def dropped_while_running(agent: EdgeAgent) -> float:
    """Frames the agent dropped, but for those a stop cut (reason shutdown: a looping camera stopped mid-stream)."""
    return float(
        sum(
            sample.value
            for metric in agent.metrics.frames_dropped.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("reason") != "shutdown"
        )
    )
