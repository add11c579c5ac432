"""FetchModel on a real grpc.aio cloud: what it refuses, with which status, and counted."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cloud.models.registry import ModelRegistry
from cloud.policy import load_private_key
from common.manifest import describe_model
from protos import session_pb2
from tests.helpers.agents import MODEL
from tests.helpers.cloud import channel, counter, make_config, running

FETCHES = "edgeglm_cloud_model_fetches_total"


async def fetch(stub: object, edge_id: str, version: str = "2", offset: int = 0) -> list[session_pb2.ModelChunk]:
    request = session_pb2.FetchModelRequest(edge_id=edge_id, name="yolo-edge", version=version, offset=offset)
    return [chunk async for chunk in stub.FetchModel(request, timeout=10)]  # type: ignore[attr-defined]


async def test_fetch_model_refuses_what_it_cannot_serve_and_whom_it_does_not_know(tmp_path: Path, clip: Path) -> None:
    async with running(make_config(tmp_path / "plain", clip)) as service, channel(service) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as no_registry:
            await fetch(stub, "gw-1")
        assert no_registry.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert counter(service, FETCHES, outcome="no_registry") == 1

    config = make_config(tmp_path, clip, known_edges=["gw-1"], models={"registry": str(tmp_path / "registry")})
    async with running(config) as service, channel(service) as stub:
        key = load_private_key(tmp_path / "keys" / "policy-signing.key")
        ModelRegistry(tmp_path / "registry").publish(MODEL, describe_model(MODEL, name="yolo-edge", version="2"), key)
        size = MODEL.stat().st_size
        with pytest.raises(grpc.aio.AioRpcError) as stranger:
            await fetch(stub, "gw-stranger")
        assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await fetch(stub, "gw-1", version="9")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "published: yolo-edge 2" in str(
            missing.value.details()
        )
        with pytest.raises(grpc.aio.AioRpcError) as past:
            await fetch(stub, "gw-1", offset=size + 1)
        assert past.value.code() == grpc.StatusCode.OUT_OF_RANGE
        tail = await fetch(stub, "gw-1", offset=size - 100)
        assert [c.offset for c in tail] == [size - 100] and tail[0].data == MODEL.read_bytes()[-100:]
        assert tail[0].manifest, "the first piece carries the signed manifest"
        assert counter(service, FETCHES, outcome="not_found") == 1
        assert counter(service, FETCHES, outcome="out_of_range") == 1
        assert counter(service, FETCHES, outcome="resumed") == 1
        assert counter(service, "edgeglm_cloud_bad_messages_total", reason="unknown_edge") == 1
