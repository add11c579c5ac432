"""A model rollout on a real loop: a cloud (grpc.aio, oracle judge, registry, admin API) and two real agents.

A worse candidate (a detector that sees a person in an empty corner of every frame) goes to the canary
first; the cloud rejects what it sends, the rule rolls the canary back by itself and the other edge
never runs it. A sound candidate (the edge model, other bytes) is promoted to the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from cloud.models.config import ModelsConfig, RolloutConfig
from cloud.models.registry import ModelRegistry
from cloud.models.rollout import RolloutController
from cloud.service import CloudService
from common.manifest import describe_model
from edge.agent import EdgeAgent
from edge.status import counter_total
from tests.helpers.agents import cloud_config, edge_config, every_frame, make_agent_clip
from tests.helpers.model_files import phantom_detector, variant
from tests.helpers.policy_keys import generate_keypair, load_private_key
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow
WAIT_S = 90.0
RULE = RolloutConfig(
    canary_fraction=0.5,
    min_samples=6,
    max_rejection_increase=0.25,
    soak_s=0,
    switch_timeout_s=60,
    check_every_s=0.2,
    # Only the cloud's verdicts judge here (the counters rule has its own tests): wide detector bounds.
    max_detection_change=100,
    max_latency_increase=100,
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))


@contextlib.asynccontextmanager
async def agents_running(agents: list[EdgeAgent]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(agent.run(stop)) for agent in agents]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)


def decided(controller: RolloutController) -> bool:
    return controller.rollout is not None and controller.rollout.stage != "canary"


def updates(agent: EdgeAgent, outcome: str) -> float:
    value: float = agent.metrics.model_updates.labels(outcome)._value.get()
    return value


async def test_the_canary_rule_rolls_a_worse_model_back_and_promotes_a_sound_one(tmp_path: Path, clip: Path) -> None:
    key = load_private_key(generate_keypair(tmp_path / "keys", "policy-signing")[0])
    registry = ModelRegistry(tmp_path / "registry")
    phantom = phantom_detector(tmp_path / "phantom.onnx")
    registry.publish(phantom, describe_model(phantom, name="yolo-edge", version="2-phantom"), key)
    sound = variant(tmp_path / "sound.onnx", "v3")
    registry.publish(sound, describe_model(sound, name="yolo-edge", version="3"), key)
    settings = every_frame()
    config = cloud_config(tmp_path, clip, settings)
    config = config.model_copy(
        update={
            "models": ModelsConfig(registry=registry.root, rollout=RULE),
            "admin": config.admin.model_copy(update={"enabled": True, "host": "127.0.0.1", "port": 0}),
        }
    )
    service = CloudService(config)
    await service.start()
    try:
        controller = service.rollout
        assert isinstance(controller, RolloutController)
        agents = [
            EdgeAgent(
                edge_config(tmp_path, clip, service.port, f"gw-{i}", loop=True, initial=settings, ask="per_frame")
            )
            for i in range(2)
        ]
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.admin_port}", timeout=10)
        async with agents_running(agents), api:
            await wait_until(lambda: len([r for r in service.fleet.records() if r.sessions]) == 2, "both edges")
            answer = await api.post("/api/rollout", json={"name": "yolo-edge", "version": "2-phantom"})
            assert answer.status_code == 201, answer.text
            (canary,) = answer.json()["rollout"]["canaries"]
            others = [agent for agent in agents if agent.config.edge_id != canary]
            assert (await api.post("/api/rollout", json={"name": "yolo-edge", "version": "3"})).status_code == 409
            assert controller.rollout is not None
            await wait_until(functools.partial(decided, controller), "the rule's decision", WAIT_S)
            state = (await api.get("/api/rollout")).json()
            assert state["rollout"]["stage"] == "rolled_back", state
            why = state["rollout"]["history"][-1]["why"]
            assert "the cloud rejects" in why and "worse" in why
            assert state["canary_rejection_rate"] > state["baseline_rejection_rate"] + RULE.max_rejection_increase
            canary_agent = next(agent for agent in agents if agent.config.edge_id == canary)
            await wait_until(lambda: canary_agent.models.running.version == "", "the canary back on its own model")
            assert updates(canary_agent, "swapped") == 1 and updates(canary_agent, "reverted") == 1
            assert all(updates(agent, "swapped") == 0 for agent in others), "only the canary ran it"
            assert (await api.post("/api/rollout/promote", json={})).status_code == 409

            answer = await api.post("/api/rollout", json={"name": "yolo-edge", "version": "3"})
            assert answer.status_code == 201, answer.text
            await wait_until(functools.partial(decided, controller), "the rule's decision", WAIT_S)
            assert controller.rollout.stage == "promoted", controller.rollout.history[-1].why
            await wait_until(
                lambda: all(agent.models.running.version == "3" for agent in agents), "the fleet on 3", WAIT_S
            )
            assert service.policy is not None and service.policy.fleet.model == controller.rollout.model
            metrics = (await api.get("/metrics")).text
            assert 'edgeglm_cloud_rollouts_total{by="rollout",outcome="rolled_back"} 1.0' in metrics
            assert 'edgeglm_cloud_rollouts_total{by="rollout",outcome="promoted"} 1.0' in metrics
            assert counter_total(agents[0].metrics.frames_detected) > 0
    finally:
        await service.stop()
    # The rollout is kept: a restarted cloud knows it.
    assert service.policy is not None
    again = RolloutController(RULE, service.policy, registry, service.fleet, CollectorRegistry())
    await again.start()
    await again.close()
    assert again.rollout is not None and again.rollout.stage == "promoted"
    assert [entry.stage for entry in again.rollout.history] == ["canary", "promoted"]
