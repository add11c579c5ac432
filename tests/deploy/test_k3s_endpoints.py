"""The probes and scrape targets in deploy/k3s answer on the real programs' servers.

The edge's health server and the whole cloud service (started from the single-node ConfigMap's
cloud.yaml) run on loopback; each probe of the rendered manifests is then made the way the kubelet
makes it (HTTP GET on the path, gRPC health Check on the service name) and must succeed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from cloud.config import CloudConfig
from cloud.service import CloudService
from edge.health import HealthServer
from edge.metrics import EdgeMetrics
from tests.helpers.k3s import container, dockerfile_copies, find, mounted_config, render

WAIT_S = 60.0


def _probe_paths(agent: dict[str, Any]) -> dict[str, str]:
    return {probe: agent[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}


async def test_edge_probes_and_scrape_path_answer_on_the_agents_health_server() -> None:
    edge = find(render("fleet"), "DaemonSet", "edgeglm-edge")
    agent = container(edge, "edge")
    metrics = EdgeMetrics(CollectorRegistry())
    metrics.uplink_bytes.inc(1234)
    state = {"alive": True, "ready": True}
    server = HealthServer(
        "127.0.0.1",
        0,
        metrics.registry,
        lambda: (state["alive"], "frames flowing" if state["alive"] else "no frame for 31 s"),
        lambda: (state["ready"], "online" if state["ready"] else "starting", [] if state["ready"] else ["model"]),
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for probe, path in _probe_paths(agent).items():
                assert (await client.get(path)).status_code == 200, probe
            scrape = edge["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
            body = (await client.get(scrape)).text
            assert "edgeglm_edge_uplink_bytes_total 1234.0" in body
            # A stuck pipeline fails liveness, a loading model fails readiness: the probes see it.
            state.update(alive=False, ready=False)
            assert (await client.get(agent["livenessProbe"]["httpGet"]["path"])).status_code == 503
            assert (await client.get(agent["readinessProbe"]["httpGet"]["path"])).status_code == 503
    finally:
        server.stop()


def _local_cloud_config(tmp_path: Path) -> CloudConfig:
    """single-node's cloud.yaml, with what only exists in the pod moved to this machine.

    Ports become free loopback ports, the store and signing key a temporary folder (the key made on
    the spot, as `edgeglm-cloud keygen` makes it for the Secret), the model the repository file the
    cloud Dockerfile copies to the path the config names, and the MQTT bridge is off (no broker here;
    test_k3s_broker covers the broker). Everything else is the ConfigMap's.
    """
    objects = render("single-node")
    cloud = find(objects, "Deployment", "edgeglm-cloud")
    raw = yaml.safe_load(mounted_config(objects, cloud, "/etc/edgeglm/cloud.yaml")[1])
    image_files = {destination: sources[0] for sources, destination in dockerfile_copies("cloud.Dockerfile")}
    raw["server"].update(host="127.0.0.1", port=0)
    raw["admin"].update(host="127.0.0.1", port=0)
    raw["mqtt"]["enabled"] = False
    raw["store"]["path"] = str(tmp_path / "state" / "verdicts.sqlite")
    raw["policy"].update(signing_key=str(tmp_path / "keys" / "policy-signing.key"), create_signing_key=True)
    raw["backend"]["model_path"] = str(image_files[raw["backend"]["model_path"]])
    for user in raw["admin"]["users"]:  # the Secret's files, made as the README makes them
        token = tmp_path / "admin" / user["name"]
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text(f"{user['name']}-token-{'0' * 32}\n")
        user["token_file"] = str(token)
    return CloudConfig.model_validate(raw)


async def test_cloud_probes_and_scrape_path_answer_on_the_running_service(tmp_path: Path) -> None:
    cloud = find(render("single-node"), "Deployment", "edgeglm-cloud")
    service_container = container(cloud, "cloud")
    service = CloudService(_local_cloud_config(tmp_path))
    await asyncio.wait_for(service.start(), WAIT_S)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                request = health_pb2.HealthCheckRequest(service=service_container[probe]["grpc"]["service"])
                answer = await health.Check(request, timeout=WAIT_S)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, probe
        annotations = cloud["spec"]["template"]["metadata"]["annotations"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.admin_port}", timeout=10) as client:
            body = (await client.get(annotations["prometheus.io/path"])).text
            assert "edgeglm_inference_queue_depth" in body
            assert (await client.get("/healthz")).json()["status"] == "SERVING"
            # Everything else asks who you are: the dashboard's data without a token is refused.
            assert (await client.get("/api/verdicts")).status_code == 401
            viewer = {"authorization": f"Bearer viewer-token-{'0' * 32}"}
            assert (await client.get("/api/verdicts", headers=viewer)).status_code == 200
    finally:
        await asyncio.wait_for(service.stop(), WAIT_S)
