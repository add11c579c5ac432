"""Mutual TLS on the edge-cloud gRPC link: a certificate is an edge's identity (real server, real channels).

An attacker tries what issue 13's findings list: saying Hello as another edge, asking for another
edge's verdicts or policy, connecting without a certificate or with one from another CA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from cloud.config import CloudConfig
from common.tls import FleetCA
from edge.config import GrpcUplinkConfig
from edge.uplink.grpc import open_channel
from protos import session_pb2, session_pb2_grpc, verdict_pb2
from tests.helpers.cloud import WAIT_S, busy_frames, counter, make_config, make_sample, read, running


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = FleetCA(tmp_path / "ca").create()
    server = ca.issue_server(tmp_path / "ca", ["localhost", "127.0.0.1"])
    one = ca.issue_edge(tmp_path / "edges", "gw-1")
    stranger = FleetCA(tmp_path / "other-ca").create().issue_edge(tmp_path / "stranger", "gw-1")
    return {
        "ca": ca.cert_file,
        "server_cert": server.cert_file,
        "server_key": server.key_file,
        "gw1_cert": one.cert_file,
        "gw1_key": one.key_file,
        "stranger_cert": stranger.cert_file,
        "stranger_key": stranger.key_file,
    }


def edge_uplink(port: int, pki: dict[str, Path], who: str = "gw1") -> GrpcUplinkConfig:
    tls = {"ca_file": pki["ca"], "cert_file": pki[f"{who}_cert"], "key_file": pki[f"{who}_key"]}
    return GrpcUplinkConfig.model_validate({"target": f"localhost:{port}", "tls": tls})


def secured(tmp_path: Path, clip: Path, pki: dict[str, Path]) -> CloudConfig:
    tls = {"cert_file": pki["server_cert"], "key_file": pki["server_key"], "client_ca_file": pki["ca"]}
    return make_config(tmp_path, clip, server={"tls": tls})


async def hello(stub: Any, edge_id: str) -> Any:
    call = stub.Session()
    await call.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id=edge_id)))
    return call


async def test_an_edge_with_its_certificate_is_served_and_speaks_only_for_itself(
    tmp_path: Path, clip: Path, pki: dict[str, Path]
) -> None:
    mine = make_sample(clip, busy_frames(clip)[0], "s-mtls", edge_id="gw-1")
    theirs = make_sample(clip, busy_frames(clip)[0], "s-forged", edge_id="gw-2")
    async with running(secured(tmp_path, clip, pki)) as service, open_channel(edge_uplink(service.port, pki)) as chan:
        stub = session_pb2_grpc.EdgeGLMStub(chan)
        call = await hello(stub, "gw-1")
        assert (await read(call)).WhichOneof("kind") == "policy"
        await call.write(session_pb2.EdgeMessage(sample=mine))
        ack, verdict = (await read(call)).ack, (await read(call)).verdict
        call.cancel()
        impostor = await hello(stub, "gw-2")
        told = (await read(impostor)).error
        with pytest.raises(grpc.aio.AioRpcError) as said_hello_as_another:
            await impostor.read()
        with pytest.raises(grpc.aio.AioRpcError) as asked_for_another:
            await stub.Infer(session_pb2.InferRequest(sample=theirs), timeout=WAIT_S)
        with pytest.raises(grpc.aio.AioRpcError) as their_policy:
            await stub.GetPolicy(session_pb2.GetPolicyRequest(edge_id="gw-2"), timeout=WAIT_S)
        forged_stored = await service.store.get("s-forged", "gw-2")
    assert ack.accepted and verdict.decision == verdict_pb2.DECISION_CONFIRMED
    assert told.code == session_pb2.SESSION_ERROR_CODE_UNKNOWN_EDGE
    for refused in (said_hello_as_another, asked_for_another, their_policy):
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "certificate belongs to edge 'gw-1'; it cannot speak for 'gw-2'" in (refused.value.details() or "")
    assert counter(service, "edgeglm_cloud_bad_messages_total", reason="impostor") == 3
    assert forged_stored is None


async def test_no_certificate_or_one_of_another_ca_gets_no_connection(
    tmp_path: Path, clip: Path, pki: dict[str, Path]
) -> None:
    async with running(secured(tmp_path, clip, pki)) as service:
        target = f"localhost:{service.port}"
        server_only = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        async with grpc.aio.secure_channel(target, server_only) as chan:
            with pytest.raises(grpc.aio.AioRpcError) as without:
                await session_pb2_grpc.EdgeGLMStub(chan).GetPolicy(
                    session_pb2.GetPolicyRequest(edge_id="gw-1"), timeout=5
                )
        async with open_channel(edge_uplink(service.port, pki, who="stranger")) as chan:
            with pytest.raises(grpc.aio.AioRpcError) as foreign:
                await session_pb2_grpc.EdgeGLMStub(chan).GetPolicy(
                    session_pb2.GetPolicyRequest(edge_id="gw-1"), timeout=5
                )
        async with grpc.aio.insecure_channel(target) as chan:
            with pytest.raises(grpc.aio.AioRpcError) as plain:
                await session_pb2_grpc.EdgeGLMStub(chan).GetPolicy(
                    session_pb2.GetPolicyRequest(edge_id="gw-1"), timeout=5
                )
    for refused in (without, foreign, plain):
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_revoked_or_misplaced_certificate_is_refused_without_a_restart(tmp_path: Path, clip: Path) -> None:
    ca = FleetCA(tmp_path / "ca").create()
    server = ca.issue_server(tmp_path / "ca", ["localhost"])
    plant = ca.issue_edge(tmp_path / "edges", "gw-1", site_id="plant-2")
    tls = {
        "cert_file": server.cert_file,
        "key_file": server.key_file,
        "client_ca_file": ca.cert_file,
        "revoked_file": ca.revoked_file,
    }
    edge_tls = {"ca_file": ca.cert_file, "cert_file": plant.cert_file, "key_file": plant.key_file}
    async with running(make_config(tmp_path, clip, server={"tls": tls})) as service:
        uplink = GrpcUplinkConfig.model_validate({"target": f"localhost:{service.port}", "tls": edge_tls})
        async with open_channel(uplink) as chan:
            stub: Any = session_pb2_grpc.EdgeGLMStub(chan)
            elsewhere = stub.Session()
            await elsewhere.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id="gw-1", site_id="plant-9")))
            moved = (await read(elsewhere)).error
            at_home = stub.Session()
            await at_home.write(session_pb2.EdgeMessage(hello=session_pb2.Hello(edge_id="gw-1", site_id="plant-2")))
            assert (await read(at_home)).WhichOneof("kind") == "policy"
            at_home.cancel()
            ca.revoke("gw-1")  # the operator revokes it; the cloud re-reads the list
            with pytest.raises(grpc.aio.AioRpcError) as revoked:
                await stub.GetPolicy(session_pb2.GetPolicyRequest(edge_id="gw-1"), timeout=WAIT_S)
    assert "puts edge 'gw-1' in site 'plant-2', not 'plant-9'" in moved.message
    assert revoked.value.code() == grpc.StatusCode.PERMISSION_DENIED and "is revoked" in (revoked.value.details() or "")
    assert counter(service, "edgeglm_cloud_bad_messages_total", reason="revoked") == 1
    assert counter(service, "edgeglm_cloud_bad_messages_total", reason="impostor") == 1


async def test_rotated_certificates_are_picked_up_without_a_restart(tmp_path: Path, clip: Path) -> None:
    """The cloud's Secret is replaced by one of a new CA: new handshakes use it, no restart."""
    old_ca = FleetCA(tmp_path / "old-ca").create()
    new_ca = FleetCA(tmp_path / "new-ca").create()
    mounted = tmp_path / "secret"  # what the pod sees; replaced file by file, as a Secret update does
    mounted.mkdir()
    old_server = old_ca.issue_server(tmp_path / "old-ca", ["localhost"])
    new_server = new_ca.issue_server(tmp_path / "new-ca", ["localhost"])

    def mount(ca: FleetCA, server: Any) -> None:
        (mounted / "tls.crt").write_bytes(server.cert_file.read_bytes())
        (mounted / "tls.key").write_bytes(server.key_file.read_bytes())
        (mounted / "ca.crt").write_bytes(ca.cert_file.read_bytes())

    mount(old_ca, old_server)
    tls = {"cert_file": mounted / "tls.crt", "key_file": mounted / "tls.key", "client_ca_file": mounted / "ca.crt"}

    def edge_of(ca: FleetCA, port: int) -> GrpcUplinkConfig:
        issued = ca.issue_edge(tmp_path / f"edge-{ca.folder.name}", "gw-1")
        files = {"ca_file": ca.cert_file, "cert_file": issued.cert_file, "key_file": issued.key_file}
        return GrpcUplinkConfig.model_validate({"target": f"localhost:{port}", "tls": files})

    async def answers(uplink: GrpcUplinkConfig) -> bool:
        async with open_channel(uplink) as chan:
            try:
                await session_pb2_grpc.EdgeGLMStub(chan).GetPolicy(
                    session_pb2.GetPolicyRequest(edge_id="gw-1"), timeout=5
                )
            except grpc.aio.AioRpcError:
                return False
            return True

    async with running(make_config(tmp_path, clip, server={"tls": tls})) as service:
        old_edge, new_edge = edge_of(old_ca, service.port), edge_of(new_ca, service.port)
        before = (await answers(old_edge), await answers(new_edge))
        mount(new_ca, new_server)
        after = (await answers(old_edge), await answers(new_edge))
    assert before == (True, False)
    assert after == (False, True)


async def test_probes_that_speak_no_tls_see_health_on_its_own_port_and_nothing_else(
    tmp_path: Path, clip: Path, pki: dict[str, Path]
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    config = secured(tmp_path, clip, pki).model_copy(deep=True)
    config.server.health_port = 0
    async with running(config) as service, grpc.aio.insecure_channel(f"127.0.0.1:{service.health_port}") as chan:
        answer = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
        with pytest.raises(grpc.aio.AioRpcError) as api:
            await session_pb2_grpc.EdgeGLMStub(chan).GetPolicy(
                session_pb2.GetPolicyRequest(edge_id="gw-1"), timeout=WAIT_S
            )
    assert service.health_port != service.port
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert api.value.code() == grpc.StatusCode.UNIMPLEMENTED, "the edges' API is not on the plaintext port"
