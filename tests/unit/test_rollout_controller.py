"""The rollout controller over a real policy engine, registry and fleet view, with a clock the test moves:
what each stage does to the policies, what an operator may do when, and that it survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from cloud.convert import SampleInput
from cloud.metrics import CloudMetrics
from cloud.models.config import RolloutConfig
from cloud.models.registry import ModelRegistry, RegistryError
from cloud.models.rollout import RolloutController, RolloutError
from cloud.policy import PolicyEngine, PolicySigner
from cloud.server import FleetStatus
from common.manifest import describe_model
from protos import session_pb2, status_pb2, verdict_pb2
from tests.helpers.agents import MODEL

CONFIG = RolloutConfig(min_samples=4, max_rejection_increase=0.2, soak_s=100, switch_timeout_s=50, max_wait_s=1000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(edge_id: str, version: str, name: str = "edge") -> SampleInput:
    return SampleInput(  # every field the observer does not read is empty
        sample_id="s",
        edge_id=edge_id,
        camera_id="cam0",
        frame_seq=0,
        captured_at=0.0,
        image=None,  # type: ignore[arg-type]
        crop=None,
        frame_size=(1, 1),
        detections=(),
        mined_reason="watch_list",
        priority=0.0,
        trace_id="",
        edge_model_name=name,
        edge_model_version=version,
    )


def verdict(rejected: bool) -> verdict_pb2.Verdict:
    return verdict_pb2.Verdict(decision=verdict_pb2.DECISION_REJECTED if rejected else verdict_pb2.DECISION_CONFIRMED)


def connect(fleet: FleetStatus, edge_id: str, version: str) -> None:
    fleet.connected(session_pb2.Hello(edge_id=edge_id, model_name="edge", model_version=version))
    fleet.heartbeat(edge_id, status_pb2.EdgeStatus(edge_id=edge_id, model_name="edge", model_version=version))


@pytest.fixture
def parts(tmp_path: Path) -> tuple[RolloutController, PolicyEngine, FleetStatus, Clock, ModelRegistry]:
    registry = ModelRegistry(tmp_path / "registry")
    registry.publish(MODEL, describe_model(MODEL, name="edge", version="2"), Ed25519PrivateKey.generate())
    engine = PolicyEngine(PolicySigner.ephemeral(), tmp_path / "policy-state.json", CloudMetrics())
    fleet = FleetStatus()
    for edge in ("gw-a", "gw-b", "gw-c"):
        connect(fleet, edge, "1")
    clock = Clock()
    controller = RolloutController(CONFIG, engine, registry, fleet, CollectorRegistry(), clock=clock)
    return controller, engine, fleet, clock, registry


async def test_an_operator_pauses_resumes_and_rolls_back_after_a_promotion(parts) -> None:
    controller, engine, fleet, clock, registry = parts
    await controller.start()
    try:
        with pytest.raises(RegistryError, match="no published model edge 9"):
            await controller.begin("edge", "9", canaries=["gw-a"])
        await controller.begin("edge", "2", canaries=["gw-a"])
        assert engine.effective("gw-a")[0].model is not None and engine.effective("gw-b")[0].model is None
        with pytest.raises(RolloutError, match="promote or roll it back first"):
            await controller.begin("edge", "2", canaries=["gw-b"])
        for _ in range(10):
            controller.observe(sample("gw-b", "1"), verdict(rejected=False))
        connect(fleet, "gw-a", "2")
        assert (await controller.check()).action == "wait"
        for _ in range(4):
            controller.observe(sample("gw-a", "2"), verdict(rejected=False))
        await controller.pause("look first", "ana")
        clock.now += 200
        assert await controller.check() is None, "a paused rollout does not move"
        await controller.resume("go on", "ana")
        clock.now += 200
        decision = await controller.check()
        assert decision is not None and decision.action == "promote", decision
        assert engine.fleet.model is not None and engine.fleet.model.version == "2"
        assert engine.effective("gw-a")[0].model == engine.fleet.model, "the canary follows the fleet again"
        with pytest.raises(RolloutError, match="is promoted; this needs it canary"):
            await controller.pause("", "ana")
        await controller.roll_back("bad at night", "ana")
        assert engine.fleet.model is None, "the fleet names what it named before"
        assert [(h.stage, h.who) for h in controller.rollout.history] == [
            ("canary", "operator"),
            ("paused", "ana"),
            ("canary", "ana"),
            ("promoted", "rollout"),
            ("rolled_back", "ana"),
        ]
    finally:
        await controller.close()
    again = RolloutController(CONFIG, engine, registry, fleet, CollectorRegistry(), clock=clock)
    await again.start()
    await again.close()
    assert again.rollout == controller.rollout


async def test_the_baseline_is_the_canaries_own_model_not_another_with_the_same_version(parts) -> None:
    controller, _engine, _fleet, _clock, _registry = parts
    await controller.begin("edge", "2", canaries=["gw-a"])
    for _ in range(6):  # another model that also calls itself version 1, and is rejected every time
        controller.observe(sample("gw-c", "1", name="door-cam"), verdict(rejected=True))
    for _ in range(3):
        controller.observe(sample("gw-b", "1"), verdict(rejected=False))
    baseline = controller.baseline()
    assert (baseline.confirmed, baseline.rejected) == (3, 0)
    assert controller.rollout is not None and controller.rollout.baseline_versions == ["edge 1"]


async def test_a_canary_that_never_switches_is_rolled_back_when_its_time_is_up(parts) -> None:
    controller, engine, _, clock, _ = parts
    started = await controller.begin("edge", "2", fraction=0.5)
    assert len(started.canaries) == 2
    clock.now += CONFIG.switch_timeout_s + 1
    decision = await controller.check()
    assert decision is not None and decision.action == "rollback" and "did not report 2" in decision.why
    assert all(engine.effective(edge)[0].model is None for edge in started.canaries)
