"""deploy/k3s renders, validates against the Kubernetes schemas, and agrees with the code.

No cluster runs here, so the manifests are held to what can be checked without one: kustomize renders
every overlay, kubernetes-validate (strict) accepts every object for Kubernetes 1.31 and the newest
schema it ships, and the values the programs care about (ports, probe paths, config files, drain
deadlines) are read from the rendered objects and compared with the code's own config models and CLIs.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.k3s import (
    CRD_KINDS,
    VARIANTS,
    WORKLOAD_KINDS,
    by_kind,
    container,
    find,
    mounted_config,
    pod_environment,
    pod_spec,
    render,
)

# The oldest Kubernetes the manifests promise to fit, and the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.31.0", "latest")
NODE = ("gw-lobby-01", "192.0.2.10")  # a gateway node's name and address, for the pod environment
EDGE_CONFIG_PATH = "/etc/edgeglm/edge.yaml"
CLOUD_CONFIG_PATH = "/etc/edgeglm/cloud.yaml"


def validator() -> Any:
    """The kubernetes_validate module, or skip/fail when it is missing."""
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        from tests.helpers.k3s import missing_tool

        missing_tool("kubernetes-validate")
    return kubernetes_validate


def _version(name: str) -> str:
    return validator().latest_version() if name == "latest" else name


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_overlay_renders_the_whole_system(variant: str) -> None:
    objects = render(variant)
    kinds = {o["kind"] for o in objects}
    assert {"DaemonSet", "Deployment", "StatefulSet", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "Service", "ConfigMap", "Namespace"} <= kinds
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "an object is rendered twice"
    for kind, namespace, name in names:
        assert kind == "Namespace" or namespace in ("edgeglm", "edgeglm-edge"), f"{kind} {name} has no namespace"


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_strictly(variant: str, k8s: str) -> None:
    kv = validator()
    version = _version(k8s)
    checked = 0
    for obj in render(variant):
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as err:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes {version}: {err.message}")
        checked += 1
    assert checked >= 20


def test_strict_validation_refuses_a_misspelt_field() -> None:
    """The control for the test above: strict mode does catch a field Kubernetes does not know."""
    kv = validator()
    daemonset = copy.deepcopy(find(render("fleet"), "DaemonSet", "edgeglm-edge"))
    pod_spec(daemonset)["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz", "port": 8081}}
    with pytest.raises(kv.ValidationError):
        kv.validate(daemonset, "1.31.0", strict=True)


def test_servicemonitors_select_the_services_and_pods_that_serve_metrics() -> None:
    objects = render("fleet+servicemonitor")
    monitor = find(objects, "ServiceMonitor", "edgeglm-cloud")
    selected = [
        s
        for s in by_kind(objects, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
        and s["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    ]
    assert [s["metadata"]["name"] for s in selected] == ["edgeglm-cloud-admin"]
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    pod_monitor = find(objects, "PodMonitor", "edgeglm-edge")
    edge = find(objects, "DaemonSet", "edgeglm-edge")
    edge_labels = edge["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= edge_labels.items()
    edge_ports = {p["name"] for p in container(edge, "edge")["ports"]}
    assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= edge_ports


# Scheduling: a small model of the scheduler's node filters (nodeSelector, required node affinity, taints).


def _term_matches(term: dict[str, Any], labels: dict[str, str]) -> bool:
    for expression in term.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def _tolerated(taint: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") not in (None, "", taint["effect"]):
            continue
        if toleration.get("operator", "Equal") == "Exists":
            if toleration.get("key") in (None, "", taint["key"]):
                return True
        elif toleration.get("key") == taint["key"] and toleration.get("value") == taint.get("value"):
            return True
    return False


def schedulable(spec: dict[str, Any], labels: dict[str, str], taints: list[dict[str, str]]) -> bool:
    """Whether the scheduler's node filters let this pod spec onto a node with these labels and taints."""
    if not spec.get("nodeSelector", {}).items() <= labels.items():
        return False
    required = spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required and not any(_term_matches(t, labels) for t in required["nodeSelectorTerms"]):
        return False
    tolerations = spec.get("tolerations", [])
    return all(_tolerated(t, tolerations) for t in taints if t["effect"] in ("NoSchedule", "NoExecute"))


LINUX = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_daemonset_schedules_only_on_gateway_nodes(variant: str) -> None:
    spec = pod_spec(find(render(variant), "DaemonSet", "edgeglm-edge"))
    gateway = {**LINUX, "edgeglm.io/gateway": "true"}
    assert schedulable(spec, gateway, [])
    # Gateways are commonly tainted to keep other work off them; the agent still lands.
    assert schedulable(spec, gateway, [{"key": "edgeglm.io/gateway", "value": "true", "effect": "NoSchedule"}])
    assert schedulable(spec, gateway, [{"key": "node-role.kubernetes.io/edge", "value": "", "effect": "NoSchedule"}])
    # Anything that is not a labelled gateway gets no agent, whatever it tolerates.
    assert not schedulable(spec, LINUX, [])
    assert not schedulable(spec, {**LINUX, "edgeglm.io/gateway": "false"}, [])
    assert not schedulable(spec, {**LINUX, "node-role.kubernetes.io/control-plane": "true"}, [])
    # It does not tolerate every taint: a node tainted for other reasons keeps it off.
    assert not schedulable(spec, gateway, [{"key": "example.com/maintenance", "value": "1", "effect": "NoSchedule"}])


def test_fleet_cloud_needs_a_gpu_node_and_the_nvidia_runtime() -> None:
    cloud = find(render("fleet"), "Deployment", "edgeglm-cloud")
    spec = pod_spec(cloud)
    assert spec["runtimeClassName"] == "nvidia"
    resources = container(cloud, "cloud")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert not schedulable(spec, LINUX, [])
    gpu_taint = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
    assert schedulable(spec, {**LINUX, "nvidia.com/gpu.present": "true"}, [gpu_taint])
    single = find(render("single-node"), "Deployment", "edgeglm-cloud")
    assert "runtimeClassName" not in pod_spec(single)
    assert "nvidia.com/gpu" not in container(single, "cloud")["resources"]["limits"]
    openai = find(render("fleet+openai+queue-depth"), "Deployment", "edgeglm-cloud")
    assert "runtimeClassName" not in pod_spec(openai), "the openai backend's replicas hold no model"
    assert "nvidia.com/gpu" not in container(openai, "cloud")["resources"]["limits"]


# Every container: requests, limits, probes, non-root, no privileges.


def _effective(pod: dict[str, Any], each: dict[str, Any], key: str) -> Any:
    own = each.get("securityContext", {})
    return own[key] if key in own else pod.get("securityContext", {}).get(key)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_has_resources_probes_and_runs_unprivileged_as_non_root(variant: str) -> None:
    workloads = [o for o in render(variant) if o["kind"] in WORKLOAD_KINDS]
    names = {"edgeglm-edge", "edgeglm-cloud", "mosquitto"} | ({"edgeglm-postgres"} if "fleet" in variant else set())
    names |= {"otel-collector"} if "otel" in variant else set()
    assert {w["metadata"]["name"] for w in workloads} == names and len(workloads) == len(names)
    for workload in workloads:
        spec = pod_spec(workload)
        kinds = [("container", c) for c in spec["containers"]] + [("init", c) for c in spec.get("initContainers", [])]
        for role, each in kinds:
            where = f"{workload['metadata']['name']}/{each['name']}"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(each.get("resources", {}).get(bound, {})), f"{where}: {bound}"
            if role == "container":  # one-shot init containers have nothing to probe
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert probe in each, f"{where}: no {probe}"
            assert _effective(spec, each, "runAsNonRoot") is True, f"{where}: may run as root"
            assert (_effective(spec, each, "runAsUser") or 0) > 0, f"{where}: runs as uid 0"
            context = each.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert not context.get("privileged", False), where
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), workload["metadata"]["name"]


# The ConfigMaps' config files pass the programs' own check-config, with the environment the pods get.


def _check_config(program: str, name: str, text: str, env: dict[str, str], tmp_path: Path) -> str:
    # The files they name (keys, models, state) live in the image and on volumes: the edge's check-config
    # is told not to open them (the tests below check each is mounted or copied in), so the file alone
    # is written.
    path = tmp_path / name
    path.write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEGLM_")}
    alone = ["--no-files"] if program == "edgeglm-edge" else []
    result = subprocess.run(
        [str(Path(sys.executable).parent / program), "check-config", str(path), *alone],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{program} check-config {name}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_configmap_passes_edge_check_config_as_each_node_sees_it(variant: str, tmp_path: Path) -> None:
    objects = render(variant)
    edge = find(objects, "DaemonSet", "edgeglm-edge")
    name, text = mounted_config(objects, edge, EDGE_CONFIG_PATH)
    env = pod_environment(container(edge, "edge"), *NODE)
    output = _check_config("edgeglm-edge", name, text, env, tmp_path)
    assert f"(edge {NODE[0]}," in output, "the node's name is the edge id"
    assert "uplink edgeglm-cloud.edgeglm.svc.cluster.local:50051" in output
    assert f"rtsp://{NODE[1]}:8554/" in env["EDGEGLM_EDGE_CAMERAS"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cloud_configmap_passes_cloud_check_config(variant: str, tmp_path: Path) -> None:
    objects = render(variant)
    cloud = find(objects, "Deployment", "edgeglm-cloud")
    name, text = mounted_config(objects, cloud, CLOUD_CONFIG_PATH)
    kind = yaml.safe_load(text)["backend"]["kind"]
    if kind == "glm":
        # check-config refuses a glm model folder that does not exist. In the pod it is the glm-weights
        # volume (test_k3s_consistency checks the mount); here an empty folder stands in for it, and
        # only that one path of the file is changed.
        model_path = yaml.safe_load(text)["backend"]["model_path"]
        stand_in = tmp_path / "volumes" / model_path.lstrip("/")
        stand_in.mkdir(parents=True)
        assert text.count(f"model_path: {model_path}") == 1
        text = text.replace(f"model_path: {model_path}", f"model_path: {stand_in}")
    dsn_file = yaml.safe_load(text)["store"].get("dsn_file")
    if dsn_file is not None:  # the Secret edgeglm-pg-dsn in the pod (test_k3s_consistency checks the mount)
        stand_in = tmp_path / "volumes" / dsn_file.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("postgresql://edgeglm:password@edgeglm-postgres.edgeglm.svc.cluster.local:5432/edgeglm\n")
        assert text.count(f"dsn_file: {dsn_file}") == 1
        text = text.replace(f"dsn_file: {dsn_file}", f"dsn_file: {stand_in}")
    env = pod_environment(container(cloud, "cloud"), *NODE)
    output = _check_config("edgeglm-cloud", name, text, env, tmp_path)
    assert f"(backend {kind}, gRPC port 50051," in output


def test_a_missing_tool_fails_on_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers.k3s import missing_tool

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="kubectl is not installed"):
        missing_tool("kubectl")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make test"):
        missing_tool("kubectl")
