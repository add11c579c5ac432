"""deploy/k3s agrees with the code: ports, probe paths and services, files the configs name, metric names.

Each test reads a value from the rendered objects and the same value from the code (a config model's
default, the health server, the gRPC health service, the metrics registries, pyproject.toml), so a
change on either side that is not made on the other fails here.
"""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud.config import AdminConfig, ServerConfig
from cloud.metrics import CloudMetrics
from cloud.server.health import SERVICE_NAME
from edge.config import HealthConfig, PipelineConfig
from edge.metrics import EdgeMetrics
from tests.helpers.k3s import (
    ROOT,
    VARIANTS,
    by_kind,
    container,
    dockerfile_copies,
    dockerfile_lines,
    find,
    mounted_config,
    pod_spec,
    render,
    volume_for,
)

EDGE_CONFIG_PATH = "/etc/edgeglm/edge.yaml"
CLOUD_CONFIG_PATH = "/etc/edgeglm/cloud.yaml"
DRAIN_MARGIN_S = (3, 15)  # the kubelet waits the drain deadline plus at least 3 s, at most 15 s more


def _edge(variant: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The edge DaemonSet and its edge.yaml (parsed)."""
    objects = render(variant)
    edge = find(objects, "DaemonSet", "edgeglm-edge")
    return edge, yaml.safe_load(mounted_config(objects, edge, EDGE_CONFIG_PATH)[1])


def _cloud(variant: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cloud Deployment and its cloud.yaml (parsed)."""
    objects = render(variant)
    cloud = find(objects, "Deployment", "edgeglm-cloud")
    return cloud, yaml.safe_load(mounted_config(objects, cloud, CLOUD_CONFIG_PATH)[1])


def _port(each: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in each["ports"]}
    return int(ports[name])


def _default(model: Any, field: str) -> Any:
    return model.model_fields[field].default


@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_health_port_and_probe_paths_are_the_agents(variant: str) -> None:
    edge, config = _edge(variant)
    agent = container(edge, "edge")
    port = _default(HealthConfig, "port")
    assert config["health"]["port"] == port == _port(agent, "health")
    assert config["health"]["host"] == "0.0.0.0", "the kubelet probes the pod's address"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"]["port"] in ("health", port)
    annotations = edge["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_grace_period_covers_the_drain_deadline(variant: str) -> None:
    edge, config = _edge(variant)
    drain = config.get("pipeline", {}).get("drain_deadline_s", _default(PipelineConfig, "drain_deadline_s"))
    grace = pod_spec(edge)["terminationGracePeriodSeconds"]
    assert drain + DRAIN_MARGIN_S[0] <= grace <= drain + DRAIN_MARGIN_S[1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cloud_ports_and_grpc_probes_are_the_services(variant: str) -> None:
    cloud, config = _cloud(variant)
    service = container(cloud, "cloud")
    grpc_port = _default(ServerConfig, "port")
    admin_port = _default(AdminConfig, "port")
    assert config["server"]["port"] == grpc_port == _port(service, "grpc")
    assert config["admin"]["port"] == admin_port == _port(service, "admin")
    assert config["admin"]["host"] == config["server"]["host"] == "0.0.0.0"
    # With mutual TLS on the main port, the probes (which speak no TLS) use the health-only port.
    probe_port = config["server"].get("health_port") if config["server"].get("tls") else grpc_port
    if probe_port != grpc_port:
        assert _port(service, "health") == probe_port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert service[probe]["grpc"] == {"port": probe_port, "service": SERVICE_NAME}
    annotations = cloud["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin_port
    # SIGTERM: finish sessions, then stop the batcher; the kubelet must wait for both.
    server = config["server"].get("shutdown_grace_s", _default(ServerConfig, "shutdown_grace_s"))
    batcher = config["batcher"]["stop_timeout_s"]
    assert pod_spec(cloud)["terminationGracePeriodSeconds"] >= server + batcher


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_select_pods_and_name_ports_they_expose(variant: str) -> None:
    objects = render(variant)
    workloads = [o for o in objects if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]
    for service in by_kind(objects, "Service"):
        name = service["metadata"]["name"]
        if name == "vllm":  # the operator's vLLM pods, not ours
            continue
        selector = service["spec"]["selector"]
        targets = [
            w
            for w in workloads
            if w["metadata"]["namespace"] == service["metadata"]["namespace"]
            and selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} workloads"
        exposed = {(p["name"], p["containerPort"]) for c in pod_spec(targets[0])["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert any(port["targetPort"] in pair for pair in exposed), f"{name}: no container port {port}"
    # The address every edge dials is the cloud's gRPC Service.
    _, config = _edge(variant)
    host, _, port = config["uplink"]["target"].rpartition(":")
    name, namespace = host.split(".")[:2]
    service = find(objects, "Service", name)
    assert service["metadata"]["namespace"] == namespace
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_volume_referenced_exists(variant: str) -> None:
    objects = render(variant)
    config_maps = {o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")}
    claims = {o["metadata"]["name"] for o in by_kind(objects, "PersistentVolumeClaim")}
    for workload in (o for o in objects if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet")):
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for each in spec["containers"]:
            for mount in each.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, f"{mount['name']} is not a volume"
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def _file_source(workload: dict[str, Any], path: str) -> tuple[str, str]:
    """(kind, name) of the Secret or ConfigMap that provides the file at `path`, directly or in a projected
    volume (its item's path is the file's name in the mount)."""
    mount, volume = volume_for(workload, path)
    relative = path.removeprefix(mount["mountPath"].rstrip("/") + "/")
    if "secret" in volume:
        sources = [("Secret", volume["secret"]["secretName"], volume["secret"].get("items", []))]
    elif "projected" in volume:
        sources = [
            ("Secret" if "secret" in each else "ConfigMap", part["name"], part.get("items", []))
            for each in volume["projected"]["sources"]
            for part in [each.get("secret") or each.get("configMap") or {"name": "?"}]
        ]
    else:
        raise AssertionError(f"{path} is not from a Secret or ConfigMap")
    for kind, name, items in sources:
        if relative in {item["path"] for item in items}:
            return kind, str(name)
    raise AssertionError(f"{path}: the {volume['name']} volume has no item {relative}")


def _secret_file(workload: dict[str, Any], path: str) -> str:
    """The Secret that provides the file at `path`."""
    kind, name = _file_source(workload, path)
    assert kind == "Secret", f"{path} is not from a Secret"
    return name


def _image_path(dockerfile: str, path: str) -> Path:
    """The repository file a Dockerfile COPYs to `path` in the image."""
    for sources, destination in dockerfile_copies(dockerfile):
        if destination == path:
            assert len(sources) == 1 and sources[0].is_file(), f"{dockerfile}: COPY to {path} names no file"
            return sources[0]
    raise AssertionError(f"{dockerfile} puts nothing at {path}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_files_the_configs_name_are_in_the_image_or_on_a_volume(variant: str) -> None:
    edge, edge_config = _edge(variant)
    assert _image_path("edge.Dockerfile", edge_config["detector"]["model_path"]).suffix == ".onnx"
    assert _secret_file(edge, edge_config["policy"]["public_key"]) == "edgeglm-policy-public-key"
    mount, volume = volume_for(edge, edge_config["state_dir"] + "/outbox.sqlite")
    assert mount["mountPath"] == edge_config["state_dir"] and "hostPath" in volume, "outbox and policy persist"
    assert not mount.get("readOnly")

    if tls := edge_config["uplink"].get("tls"):  # the fleet: each gateway's own certificate, on the node
        for name in ("ca_file", "cert_file", "key_file"):
            mount, volume = volume_for(edge, tls[name])
            assert "hostPath" in volume and mount.get("readOnly") is True, f"{variant}: uplink.tls.{name}"

    cloud, cloud_config = _cloud(variant)
    assert _secret_file(cloud, cloud_config["policy"]["signing_key"]) == "edgeglm-policy-signing-key"
    if server_tls := cloud_config["server"].get("tls"):
        for name in ("cert_file", "key_file", "client_ca_file"):
            assert _secret_file(cloud, server_tls[name]) == "edgeglm-grpc-tls", f"{variant}: server.tls.{name}"
        # The deny list: in that Secret when made by hand, beside it in a ConfigMap under cert-manager.
        assert _file_source(cloud, server_tls["revoked_file"]) in {
            ("Secret", "edgeglm-grpc-tls"),
            ("ConfigMap", "edgeglm-grpc-revoked"),
        }, variant
        health = cloud_config["server"]["health_port"]
        probes = [
            container(cloud, "cloud")[p]["grpc"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")
        ]
        assert probes == [health] * 3, f"{variant}: the probes speak no TLS: they use the health-only port"
    if cloud_config["store"].get("kind") == "postgres":  # the fleet's replicas share one database
        assert _secret_file(cloud, cloud_config["store"]["dsn_file"]) == "edgeglm-pg-dsn", variant
        database = find(render(variant), "Service", "edgeglm-postgres")
        host = f"{database['metadata']['name']}.{database['metadata']['namespace']}.svc.cluster.local"
        readme = (ROOT / "deploy" / "k3s" / "README.md").read_text()
        assert f"@{host}:{database['spec']['ports'][0]['port']}/" in readme, "the README's DSN names the Service"
    mqtt_tls = cloud_config["mqtt"]["tls"]  # the broker has only a TLS listener
    for name in ("ca_file", "cert_file", "key_file"):
        assert _secret_file(cloud, mqtt_tls[name]) == "edgeglm-mqtt-tls", f"{variant}: mqtt.tls.{name}"
    assert cloud_config["policy"]["create_signing_key"] is False, "replicas share one key, made by keygen"
    users = cloud_config["admin"]["users"]
    assert {user["role"] for user in users} == {"admin", "operator", "viewer"}
    assert {_secret_file(cloud, user["token_file"]) for user in users} == {"edgeglm-admin-tokens"}
    mount, volume = volume_for(cloud, cloud_config["store"]["path"])
    assert not mount.get("readOnly")
    backend = cloud_config["backend"]
    if backend["kind"] == "onnx":
        assert _image_path("cloud.Dockerfile", backend["model_path"]).suffix == ".onnx"
    elif backend["kind"] == "glm":
        mount, volume = volume_for(cloud, backend["model_path"] + "/config.json")
        assert volume["persistentVolumeClaim"]["claimName"] == "glm-weights" and mount["readOnly"] is True
    else:
        assert backend["kind"] == "openai"
        assert _secret_file(cloud, backend["api_key_file"]) == "vllm-api-key"
        host = backend["base_url"].split("//")[1].split(":")[0]
        vllm = find(render(variant), "Service", host.split(".")[0])
        assert vllm["metadata"]["namespace"] == host.split(".")[1]


def _exposed_metric_names() -> dict[str, str]:
    """Every series name the edge and cloud registries expose -> the metric's type."""
    names: dict[str, str] = {}
    for registry in (EdgeMetrics().registry, CloudMetrics().registry):
        for family in registry.collect():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
            for suffix in suffixes.get(family.type, ("",)):
                names[family.name + suffix] = family.type
    return names


def test_dashboard_queries_use_metrics_the_code_exposes() -> None:
    objects = render("fleet")
    dashboard_map = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("edgeglm-graf"))
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = yaml.safe_load(dashboard_map["data"]["edgeglm.json"])  # JSON is YAML
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bedgeglm_[a-z_]+", expr)}
    exposed = _exposed_metric_names()
    assert used - exposed.keys() == set(), "the dashboard queries series the code does not expose"
    # What the issue asks the dashboard to show, by the metrics that carry it.
    for needed in (
        "edgeglm_edge_uplink_bytes_total",  # uplink bytes
        "edgeglm_edge_mined_total",  # samples by reason
        "edgeglm_edge_verdict_latency_seconds_bucket",  # verdict latency
        "edgeglm_inference_batch_size_sum",  # batch sizes
        "edgeglm_inference_queue_depth",  # queue depth
        "edgeglm_edge_uplink_connected",  # autonomous edges
    ):
        assert needed in used, needed


def test_queue_depth_autoscaling_reads_the_batchers_gauge() -> None:
    hpa = find(render("fleet+openai+queue-depth"), "HorizontalPodAutoscaler", "edgeglm-cloud")
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == ["edgeglm_inference_queue_depth"]
    assert _exposed_metric_names()[pods[0]] == "gauge"
    assert any(m["type"] == "Resource" for m in hpa["spec"]["metrics"]), "CPU stays a signal"


@pytest.mark.parametrize(("dockerfile", "extra", "program", "workload"), [
    ("edge.Dockerfile", "edge", "edgeglm-edge", ("DaemonSet", "edgeglm-edge", "edge")),
    ("cloud.Dockerfile", "cloud", "edgeglm-cloud", ("Deployment", "edgeglm-cloud", "cloud")),
])  # fmt: skip
def test_dockerfiles_install_the_right_extra_and_run_as_the_pods_user(
    dockerfile: str, extra: str, program: str, workload: tuple[str, str, str]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(dockerfile_lines(dockerfile))
    installs = [rest for instruction, rest in lines if instruction == "RUN" and "pip install" in rest]
    assert any(f'".[{extra}]"' in rest for rest in installs)
    assert extra in project["optional-dependencies"]
    for sources, _ in dockerfile_copies(dockerfile):
        for source in sources:
            assert source.exists(), f"{dockerfile}: COPY {source.relative_to(ROOT)} does not exist"
    entrypoint = next(typing.cast(list[str], yaml.safe_load(rest)) for i, rest in lines if i == "ENTRYPOINT")
    command = next(typing.cast(list[str], yaml.safe_load(rest)) for i, rest in lines if i == "CMD")
    assert entrypoint == [program] and program in project["scripts"]
    user = next(rest for instruction, rest in lines if instruction == "USER")
    kind, name, container_name = workload
    objects = render("fleet")
    pod = find(objects, kind, name)
    assert int(user.split(":")[0]) == pod_spec(pod)["securityContext"]["runAsUser"] != 0
    # The pod runs the image's program on the config file it mounts.
    args = container(pod, container_name)["args"]
    assert args == command
    mounted_config(objects, pod, args[args.index("--config") + 1])


def _readme_secrets() -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> keys of every `kubectl -n NS create secret generic NAME --from-file=...` in the README."""
    text = (ROOT / "deploy" / "k3s" / "README.md").read_text().replace("\\\n", " ")
    secrets: dict[tuple[str, str], set[str]] = {}
    for namespace, name, rest in re.findall(r"kubectl -n (\S+) create secret generic (\S+)(.*)", text):
        sources = re.findall(r"--from-file=(\S+)", rest)
        secrets[(namespace, name)] = {s.split("=")[0] if "=" in s else Path(s).name for s in sources}
    return secrets


@pytest.mark.parametrize("variant", VARIANTS)
def test_readme_creates_every_secret_the_manifests_mount(variant: str) -> None:
    created = _readme_secrets()
    for workload in (o for o in render(variant) if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet")):
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" not in volume:
                continue
            key = (workload["metadata"]["namespace"], volume["secret"]["secretName"])
            assert key in created, f"the README never creates Secret {key[1]} in {key[0]}"
            needed = {item["key"] for item in volume["secret"].get("items", [])}
            assert needed <= created[key], f"Secret {key[1]}: the README gives {created[key]}, pods read {needed}"
    # The broker's Secret is mounted whole: the files its config names must be in it.
    objects = render(variant)
    conf = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("mosquitto-config"))
    pattern = r"^(?:cafile|certfile|keyfile) /mosquitto/certs/(\S+)$"
    named = set(re.findall(pattern, conf["data"]["mosquitto.conf"], re.MULTILINE))
    assert named == {"ca.crt", "tls.crt", "tls.key"}
    assert named <= created[("edgeglm", "mosquitto-tls")]
    broker = find(objects, "StatefulSet", "mosquitto")
    for name in named:
        assert volume_for(broker, f"/mosquitto/certs/{name}")[1]["secret"]["secretName"] == "mosquitto-tls"
    for acl in re.findall(r"^acl_file (\S+)$", conf["data"]["mosquitto.conf"], re.MULTILINE):
        mount, volume = volume_for(broker, acl)
        assert volume["configMap"]["name"] == conf["metadata"]["name"]
        assert acl.removeprefix(mount["mountPath"] + "/") in conf["data"]
