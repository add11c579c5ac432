"""Models over MQTT: a real cloud (its MQTT bridge and model registry), Debian's mosquitto, and a real
agent whose only uplink is the broker. The agent fetches the model its policy names through the
broker, resumes a download the link cut, and is told plainly what the cloud will not serve.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cloud.models.config import ModelsConfig
from cloud.models.registry import ModelRegistry
from common.manifest import ModelServeError
from edge.agent import EdgeAgent
from edge.config import MqttUplinkConfig
from edge.metrics import EdgeMetrics
from edge.status import counter_total
from edge.uplink.mqtt import MqttUplink
from protos import session_pb2
from tests.helpers.agents import SILENT, cloud_config, edge_config, make_agent_clip
from tests.helpers.broker import MosquittoBroker
from tests.helpers.cloud import running
from tests.helpers.cut_proxy import cut_proxy
from tests.helpers.model_files import NAME, variant
from tests.helpers.mqtt import quiet_handlers
from tests.helpers.rollout import outcome, publish, signing_key
from tests.helpers.rollout import running as agent_running
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.parametrize("broker", ["mqtt"], indirect=True)
WAIT_S = 60.0
PIECE = 64 * 1024  # many pieces per model: the bridge's window and the edge's order are exercised


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))


def mqtt_cloud(tmp_path: Path, clip: Path, broker: MosquittoBroker) -> Any:
    config = cloud_config(tmp_path, clip, SILENT, broker)
    return config.model_copy(update={"models": ModelsConfig(registry=tmp_path / "registry", chunk_bytes=PIECE)})


def mqtt_edge(tmp_path: Path, clip: Path, edge_id: str, broker: Any) -> Any:
    config = edge_config(tmp_path, clip, 0, edge_id, loop=True, initial=SILENT, broker=broker)
    camera = config.cameras[0].model_copy(update={"realtime": False})
    models = config.models.model_copy(update={"retry_initial_s": 0.2, "retry_max_s": 1.0})
    return config.model_copy(update={"cameras": [camera], "models": models})


async def test_an_mqtt_edge_fetches_the_model_its_policy_names_and_runs_it(
    tmp_path: Path, clip: Path, broker: MosquittoBroker
) -> None:
    key = signing_key(tmp_path)
    registry = ModelRegistry(tmp_path / "registry")
    v2 = publish(registry, variant(tmp_path / "v2.onnx", "v2"), "2", key)
    async with running(mqtt_cloud(tmp_path, clip, broker)) as service:
        assert service.policy is not None
        await service.policy.set_fleet_model(v2.ref(), "rollout over MQTT")
        agent = EdgeAgent(mqtt_edge(tmp_path, clip, "gw-mqtt", broker))
        async with agent_running(agent):
            await wait_until(lambda: agent.models.running.version == "2", "the MQTT agent runs version 2", WAIT_S)
        served = service.metrics.model_bytes_served._value.get()
    assert agent.models.running.sha256 == v2.manifest.sha256
    assert counter_total(agent.metrics.model_download_bytes) == v2.manifest.size_bytes
    assert served == v2.manifest.size_bytes, "each piece went down once"
    assert outcome(agent, "swapped") == 1


async def test_a_download_the_link_cuts_resumes_where_it_stopped(
    tmp_path: Path, clip: Path, broker: MosquittoBroker
) -> None:
    key = signing_key(tmp_path)
    registry = ModelRegistry(tmp_path / "registry")
    v2 = publish(registry, variant(tmp_path / "v2.onnx", "v2"), "2", key)
    size = v2.manifest.size_bytes
    async with running(mqtt_cloud(tmp_path, clip, broker)) as service:
        assert service.policy is not None
        await service.policy.set_fleet_model(v2.ref(), "rollout over MQTT")
        # The edge reaches the broker through a relay that cuts its first connection half-way down the file.
        async with cut_proxy(broker.port, cut_after=size // 2) as proxy:
            agent = EdgeAgent(mqtt_edge(tmp_path, clip, "gw-cut", SimpleNamespace(host="127.0.0.1", port=proxy.port)))
            async with agent_running(agent):
                await wait_until(lambda: agent.models.running.version == "2", "version 2 after the cut", WAIT_S)
        resumed = service.metrics.model_fetches.labels("resumed")._value.get()
    assert proxy.cuts == 1
    assert resumed >= 1, "the next request starts past byte 0"
    assert outcome(agent, "download_failed") >= 1
    assert agent.models.running.sha256 == v2.manifest.sha256


async def test_what_the_cloud_will_not_serve_is_refused_with_its_reason(
    tmp_path: Path, clip: Path, broker: MosquittoBroker
) -> None:
    key = signing_key(tmp_path)
    publish(ModelRegistry(tmp_path / "registry"), variant(tmp_path / "v2.onnx", "v2"), "2", key)
    uplink = MqttUplink(
        MqttUplinkConfig(host=broker.host, port=broker.port, keepalive_s=5), quiet_handlers("gw-ask"), EdgeMetrics()
    )
    async with running(mqtt_cloud(tmp_path, clip, broker)) as service:
        await uplink.start()
        try:
            await wait_until(lambda: uplink.cloud_reachable, "the cloud bridge online")

            async def pieces(**fields: Any) -> list[session_pb2.ModelChunk]:
                request = session_pb2.FetchModelRequest(name=NAME, **{"edge_id": "gw-ask", "version": "2", **fields})
                return [piece async for piece in uplink.model_chunks(request, 20.0)]

            with pytest.raises(ModelServeError) as missing:
                await pieces(version="9")
            with pytest.raises(ModelServeError) as impostor:
                await pieces(edge_id="gw-other")
            with pytest.raises(ModelServeError) as past:
                await pieces(offset=10**9)
            whole = await pieces()
        finally:
            await uplink.stop()
        not_found = service.metrics.model_fetches.labels("not_found")._value.get()
        impostors = service.metrics.bad_messages.labels("impostor")._value.get()
    assert missing.value.code == "NOT_FOUND" and "yolo" in str(missing.value)
    assert impostor.value.code == "PERMISSION_DENIED" and "gw-other" in str(impostor.value)
    assert past.value.code == "OUT_OF_RANGE"
    assert (not_found, impostors) == (1, 1)
    data = b"".join(piece.data for piece in whole)
    assert data == (tmp_path / "registry" / NAME / "2" / "model.onnx").read_bytes()
    assert whole[0].manifest and all(not piece.manifest for piece in whole[1:])
