"""A policy names a model and the edge runs it: a real cloud (grpc.aio, model registry, signing key) and a
real agent on a clip, over loopback. The model files are real ONNX detectors: variants of the committed
edge model (same graph, other metadata, so other bytes and hash) and a segmentation export.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.config import CloudConfig
from cloud.models.config import ModelsConfig
from cloud.models.registry import ModelRegistry
from cloud.service import CloudService
from common.manifest import file_digest
from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from edge.status import counter_total
from tests.helpers.agents import MODEL, SILENT, cloud_config, edge_config, make_agent_clip
from tests.helpers.cloud import running as cloud_running
from tests.helpers.cut_proxy import cut_proxy
from tests.helpers.model_files import NAME, hand_manifest, segmentation_model, variant
from tests.helpers.rollout import dropped_while_running, outcome, publish, running, signing_key
from tests.helpers.wait import wait_until

CAMERAS = 3
FRAMES = CAMERAS * 40  # the clip's frames on each camera
WAIT_S = 60.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))


def rollout_cloud(tmp_path: Path, clip: Path, chunk_bytes: int = 1 << 20) -> tuple[CloudConfig, ModelRegistry]:
    config = cloud_config(tmp_path, clip, SILENT)
    models = ModelsConfig(registry=tmp_path / "registry", chunk_bytes=chunk_bytes)
    return config.model_copy(update={"models": models}), ModelRegistry(tmp_path / "registry")


def rollout_edge(
    tmp_path: Path, clip: Path, port: int, edge_id: str, *, loop: bool = True, cameras: int = 1
) -> EdgeConfig:
    """An agent reading its clip (on `cameras` cameras) as fast as it detects: lossless, the source waits
    for the pipeline."""
    config = edge_config(tmp_path, clip, port, edge_id, loop=loop, initial=SILENT)
    camera = config.cameras[0].model_copy(update={"realtime": False})
    feeds = [camera.model_copy(update={"id": f"cam{index}"}) for index in range(cameras)]
    models = config.models.model_copy(update={"retry_initial_s": 0.2, "retry_max_s": 1.0})
    return config.model_copy(update={"cameras": feeds, "models": models})


def runs(agent: EdgeAgent, version: str) -> bool:
    return agent.models.running.version == version


def cloud_counter(service: CloudService, name: str, *labels: str) -> float:
    metric = getattr(service.metrics, name)
    value: float = (metric.labels(*labels) if labels else metric)._value.get()
    return value


async def detected_more(agent: EdgeAgent, frames: int, what: str) -> None:
    start = counter_total(agent.metrics.frames_detected)
    await wait_until(lambda: counter_total(agent.metrics.frames_detected) >= start + frames, what)


def summary(agent: EdgeAgent) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((agent.config.state_dir / "summary.json").read_text())
    return result


async def test_the_named_model_is_swapped_in_under_load_without_losing_a_frame_and_survives_a_restart(
    tmp_path: Path, clip: Path
) -> None:
    key = signing_key(tmp_path)
    config, registry = rollout_cloud(tmp_path, clip)
    v2 = publish(registry, variant(tmp_path / "v2.onnx", "v2"), "2", key)
    async with cloud_running(config) as service:
        assert service.policy is not None
        await service.policy.set_fleet_model(v2.ref(), "test rollout")
        # The clip once on each camera, as fast as the pipeline takes it: the swap lands in the middle.
        agent = EdgeAgent(rollout_edge(tmp_path, clip, service.port, "gw-swap", loop=False, cameras=CAMERAS))
        run = asyncio.create_task(agent.run(asyncio.Event()))
        assert agent.models.running.version == ""
        await wait_until(lambda: agent.models.running.version == "2" or run.done(), "the agent runs version 2")
        detected_at_swap = counter_total(agent.metrics.frames_detected)
        record = service.fleet.get("gw-swap")
        assert record is not None
        await wait_until(lambda: record.model == (NAME, "2") or run.done(), "a heartbeat saying version 2")
        assert record.model == (NAME, "2"), "the cloud knows which model the edge runs"
        assert record.status is not None and record.status.counters.frames_detected > 0
        assert record.status.counters.detections > 0 and record.status.counters.detect_seconds > 0
        await asyncio.wait_for(run, WAIT_S)
    done = summary(agent)
    assert 0 < detected_at_swap < done["frames_detected"], "frames were detected on both models"
    assert done["frames_read"] == FRAMES
    assert done["frames_dropped"] == 0
    assert done["frames_detected"] + done["frames_gated"] == FRAMES
    assert outcome(agent, "swapped") == 1
    assert counter_total(agent.metrics.model_download_bytes) == v2.manifest.size_bytes
    # Restarted with no cloud at all, it runs what it ran: version 2, from its own disk.
    restarted = EdgeAgent(rollout_edge(tmp_path, clip, 9, "gw-swap", loop=False))
    await asyncio.wait_for(restarted.run(asyncio.Event()), WAIT_S)
    assert restarted.models.running.version == "2"
    assert restarted.models.running.sha256 == v2.manifest.sha256
    assert counter_total(restarted.metrics.frames_detected) > 0


async def test_a_download_cut_in_the_middle_resumes_where_it_stopped(tmp_path: Path, clip: Path) -> None:
    key = signing_key(tmp_path)
    config, registry = rollout_cloud(tmp_path, clip, chunk_bytes=64 * 1024)
    v2 = publish(registry, variant(tmp_path / "v2.onnx", "v2"), "2", key)
    size = v2.manifest.size_bytes
    async with cloud_running(config) as service, cut_proxy(service.port, cut_after=size // 2) as proxy:
        assert service.policy is not None
        await service.policy.set_fleet_model(v2.ref(), "test rollout")
        agent = EdgeAgent(rollout_edge(tmp_path, clip, proxy.port, "gw-cut"))
        async with running(agent):
            await wait_until(lambda: agent.models.running.version == "2", "the agent runs version 2", WAIT_S)
        served = cloud_counter(service, "model_bytes_served")
        resumed = cloud_counter(service, "model_fetches", "resumed")
    assert proxy.cuts == 1
    assert resumed >= 1, "the second request starts past byte 0"
    # Each byte went down once: what the first attempt wrote was kept, the second sent the rest.
    assert counter_total(agent.metrics.model_download_bytes) == size
    assert served < size + size // 2
    assert outcome(agent, "download_failed") >= 1
    assert agent.models.running.sha256 == v2.manifest.sha256


@pytest.mark.parametrize("fault", ["hash", "signature", "not_detector"])
async def test_a_bad_model_is_refused_and_the_running_model_goes_on(tmp_path: Path, clip: Path, fault: str) -> None:
    key = signing_key(tmp_path)
    config, registry = rollout_cloud(tmp_path, clip)
    if fault == "hash":
        bad = publish(registry, variant(tmp_path / "v2.onnx", "v2"), "2", key)
        data = bytearray(bad.path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # the registry's copy rots on disk after it was published
        bad.path.write_bytes(bytes(data))
    elif fault == "signature":
        impostor = Ed25519PrivateKey.generate()
        bad = publish(registry, variant(tmp_path / "v2.onnx", "v2"), "2", impostor)
    else:
        path = segmentation_model(tmp_path / "seg.onnx")
        bad = registry.publish(path, hand_manifest(path, "2"), key)
    async with cloud_running(config) as service:
        assert service.policy is not None
        agent = EdgeAgent(rollout_edge(tmp_path, clip, service.port, f"gw-{fault}"))
        async with running(agent):
            await service.policy.set_fleet_model(bad.ref(), "test rollout")
            await wait_until(lambda: outcome(agent, fault) == 1, f"the model refused for its {fault}", WAIT_S)
            await detected_more(agent, 10, "frames detected after the refusal")
            assert agent.models.running.version == ""
            assert agent.models.store.refusal(bad.ref()) == fault
            fetches = cloud_counter(service, "model_fetches", "served")
            # A refused file is not fetched again for the same policy.
            await detected_more(agent, 10, "more frames")
            assert cloud_counter(service, "model_fetches", "served") == fetches
    assert dropped_while_running(agent) == 0
    assert outcome(agent, "swapped") == 0
    assert not list(agent.models.store.root.glob("*.onnx*")), "nothing of the refused file is kept"


async def test_a_rollback_swaps_the_previous_model_back_without_a_download(tmp_path: Path, clip: Path) -> None:
    key = signing_key(tmp_path)
    config, registry = rollout_cloud(tmp_path, clip)
    v2 = publish(registry, variant(tmp_path / "v2.onnx", "v2"), "2", key)
    v3 = publish(registry, variant(tmp_path / "v3.onnx", "v3"), "3", key)
    async with cloud_running(config) as service:
        engine = service.policy
        assert engine is not None
        agent = EdgeAgent(rollout_edge(tmp_path, clip, service.port, "gw-back"))
        async with running(agent):
            for version, model in (("2", v2), ("3", v3)):
                await engine.set_fleet_model(model.ref(), "test rollout")
                await wait_until(functools.partial(runs, agent, version), f"version {version} running")
            downloaded = counter_total(agent.metrics.model_download_bytes)
            fetches = cloud_counter(service, "model_fetches", "served")
            await engine.set_fleet_model(v2.ref(), "test rollback")
            await wait_until(lambda: agent.models.running.version == "2", "version 2 again", WAIT_S)
            await detected_more(agent, 10, "frames detected after the rollback")
            # A policy that names no model: the edge runs the model of its own config again.
            await engine.set_fleet_model(None, "test: back to the configured model")
            await wait_until(lambda: agent.models.running.sha256 == file_digest(MODEL)[0], "the configured model")
            await detected_more(agent, 10, "frames detected on the configured model")
            assert agent.models.running.version == ""
            assert agent.models.store.current is None
            # ... and keeps version 2 for a rollout that names it again.
            await engine.set_fleet_model(v2.ref(), "test: again")
            await wait_until(lambda: agent.models.running.version == "2", "version 2 once more", WAIT_S)
    assert counter_total(agent.metrics.model_download_bytes) == downloaded
    assert cloud_counter(service, "model_fetches", "served") == fetches
    assert outcome(agent, "rolled_back") == 2
    assert outcome(agent, "swapped") == 2
    assert outcome(agent, "reverted") == 1
    assert dropped_while_running(agent) == 0
