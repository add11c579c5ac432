"""The NetworkPolicies of deploy/k3s, evaluated the way Kubernetes does over the rendered objects.

A connection is allowed when the policies selecting the source allow it out (or none isolates the
source for egress) and the policies selecting the destination allow it in (same for ingress). The
model covers what the manifests use: podSelector/namespaceSelector matchLabels, ipBlock with except,
ports with protocol.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from cloud.config import ServerConfig
from edge.config import HealthConfig
from tests.helpers.k3s import VARIANTS, by_kind, find, render

POD_NETWORK = "10.42.{}.{}"  # K3s' default cluster CIDR 10.42.0.0/16


@dataclass(frozen=True)
class Pod:
    """A pod somewhere in the cluster (or an address outside it, when namespace is empty)."""

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.42.1.10"


def _namespace_labels(objects: tuple[dict[str, Any], ...], namespace: str) -> dict[str, str]:
    declared = next((n for n in by_kind(objects, "Namespace") if n["metadata"]["name"] == namespace), None)
    labels = dict(declared["metadata"].get("labels", {})) if declared else {}
    labels["kubernetes.io/metadata.name"] = namespace  # set by Kubernetes on every namespace
    return labels


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"model does not cover {selector}"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def _peer_matches(objects: tuple[dict[str, Any], ...], policy_ns: str, peer: dict[str, Any], pod: Pod) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(pod.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(excluded) for excluded in block.get("except", [])
        )
    if not pod.namespace:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], _namespace_labels(objects, pod.namespace)):
            return False
    elif pod.namespace != policy_ns:
        return False
    return _selects(peer.get("podSelector", {}), pod.labels)


def _rule_allows(objects: tuple[dict[str, Any], ...], policy: dict[str, Any], rule: dict[str, Any], peers_key: str,
                 other: Pod, port: int, protocol: str) -> bool:  # fmt: skip
    ports = rule.get("ports")
    if ports and not any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports):
        return False
    peers = rule.get(peers_key)
    namespace = policy["metadata"]["namespace"]
    return not peers or any(_peer_matches(objects, namespace, peer, other) for peer in peers)


def _direction_allows(objects: tuple[dict[str, Any], ...], subject: Pod, other: Pod, port: int, protocol: str,
                      direction: str) -> bool:  # fmt: skip
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    policies = [
        p
        for p in by_kind(objects, "NetworkPolicy")
        if p["metadata"]["namespace"] == subject.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and _selects(p["spec"]["podSelector"], subject.labels)
    ]
    if not policies:
        return True
    return any(
        _rule_allows(objects, policy, rule, peers_key, other, port, protocol)
        for policy in policies
        for rule in policy["spec"].get(key, [])
    )


def allowed(objects: tuple[dict[str, Any], ...], source: Pod, target: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether the policies let `source` open a connection to `target` on `port`."""
    out = not source.namespace or _direction_allows(objects, source, target, port, protocol, "Egress")
    into = not target.namespace or _direction_allows(objects, target, source, port, protocol, "Ingress")
    return out and into


def _pod_of(objects: tuple[dict[str, Any], ...], kind: str, name: str, ip: str) -> Pod:
    workload = find(objects, kind, name)
    return Pod(workload["metadata"]["namespace"], workload["spec"]["template"]["metadata"]["labels"], ip)


def _cast(objects: tuple[dict[str, Any], ...]) -> dict[str, Pod]:
    return {
        "edge": _pod_of(objects, "DaemonSet", "edgeglm-edge", POD_NETWORK.format(1, 10)),
        "cloud": _pod_of(objects, "Deployment", "edgeglm-cloud", POD_NETWORK.format(2, 10)),
        "broker": _pod_of(objects, "StatefulSet", "mosquitto", POD_NETWORK.format(3, 10)),
        "dns": Pod("kube-system", {"k8s-app": "kube-dns"}, POD_NETWORK.format(0, 2)),
        "prometheus": Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, POD_NETWORK.format(4, 10)),
        "other-app": Pod("default", {"app": "shop"}, POD_NETWORK.format(5, 10)),
        "vllm": Pod("edgeglm", {"app.kubernetes.io/name": "vllm"}, POD_NETWORK.format(6, 10)),
        "postgres": Pod("edgeglm", {"app.kubernetes.io/name": "edgeglm-postgres"}, POD_NETWORK.format(7, 10)),
        "camera": Pod("", {}, "192.168.10.20"),
        "internet": Pod("", {}, "203.0.113.7"),
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_edges_reach_only_the_cloud_grpc_port_the_broker_dns_and_cameras(variant: str) -> None:
    objects = render(variant)
    pod = _cast(objects)
    edge = pod["edge"]
    grpc_port = ServerConfig.model_fields["port"].default
    assert allowed(objects, edge, pod["cloud"], grpc_port)
    assert allowed(objects, edge, pod["broker"], 8883)
    assert allowed(objects, edge, pod["dns"], 53, "UDP") and allowed(objects, edge, pod["dns"], 53, "TCP")
    assert allowed(objects, edge, pod["camera"], 554)
    # And nothing else.
    assert not allowed(objects, edge, pod["cloud"], 8080), "the admin API has no auth: edges must not reach it"
    assert not allowed(objects, edge, pod["broker"], 1883), "the broker has no plain listener"
    assert not allowed(objects, edge, pod["vllm"], 8000)
    assert not allowed(objects, edge, pod["other-app"], 80)
    assert not allowed(objects, edge, pod["internet"], 443)
    assert not allowed(objects, edge, pod["camera"], 22)
    assert not allowed(objects, edge, pod["other-app"], 554), "the camera rule does not open the pod network"


@pytest.mark.parametrize("variant", VARIANTS)
def test_admin_api_is_closed_to_everything_but_the_cloud_side_and_mqtt_has_no_plain_port(variant: str) -> None:
    objects = render(variant)
    pod = _cast(objects)
    assert allowed(objects, pod["prometheus"], pod["cloud"], 8080)
    assert allowed(objects, pod["cloud"], pod["cloud"], 8080)
    assert not allowed(objects, pod["other-app"], pod["cloud"], 8080)
    assert allowed(objects, pod["cloud"], pod["broker"], 8883)
    for anyone in ("cloud", "edge", "other-app", "prometheus", "vllm"):
        assert not allowed(objects, pod[anyone], pod["broker"], 1883), anyone
    assert not allowed(objects, pod["other-app"], pod["cloud"], 50051)
    # Prometheus scrapes the edges' health port; nobody else reaches into an edge pod.
    health_port = HealthConfig.model_fields["port"].default
    assert allowed(objects, pod["prometheus"], pod["edge"], health_port)
    assert not allowed(objects, pod["cloud"], pod["edge"], health_port)


def test_policy_ports_are_the_brokers_listeners() -> None:
    objects = render("fleet")
    conf = find(objects, "ConfigMap", _name(objects, "mosquitto-config"))["data"]["mosquitto.conf"]
    listeners = {int(port) for port in re.findall(r"^listener (\d+)", conf, flags=re.MULTILINE)}
    policy = find(objects, "NetworkPolicy", "mosquitto")
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert opened == listeners == {8883}
    broker = find(objects, "StatefulSet", "mosquitto")
    exposed = {p["containerPort"] for p in broker["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert exposed == listeners


def _name(objects: tuple[dict[str, Any], ...], prefix: str) -> str:
    """The generated (hash-suffixed) name of a ConfigMap."""
    names = [o["metadata"]["name"] for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith(prefix)]
    assert len(names) == 1, names
    return str(names[0])


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.startswith("fleet")])
def test_only_the_cloud_reaches_the_fleets_database(variant: str) -> None:
    objects = render(variant)
    pod = _cast(objects)
    find(objects, "StatefulSet", "edgeglm-postgres")
    assert allowed(objects, pod["cloud"], pod["postgres"], 5432)
    for stranger in ("edge", "broker", "other-app", "prometheus", "vllm"):
        assert not allowed(objects, pod[stranger], pod["postgres"], 5432), stranger


def test_the_edges_and_the_cloud_send_traces_to_the_collector_and_nobody_else_does() -> None:
    objects = render("fleet+otel-collector")
    pod = _cast(objects)
    collector = _pod_of(objects, "Deployment", "otel-collector", POD_NETWORK.format(8, 10))
    assert allowed(objects, pod["edge"], collector, 4317) and allowed(objects, pod["cloud"], collector, 4317)
    for stranger in ("broker", "other-app", "prometheus", "vllm"):
        assert not allowed(objects, pod[stranger], collector, 4317), stranger
    service = find(objects, "Service", "otel-collector")
    endpoint = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:4317"
    for kind, name, program in (("Deployment", "edgeglm-cloud", "CLOUD"), ("DaemonSet", "edgeglm-edge", "EDGE")):
        containers = find(objects, kind, name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in containers[0]["env"]}
        assert env[f"EDGEGLM_{program}_TRACING__ENABLED"] == "true"
        assert env[f"EDGEGLM_{program}_TRACING__ENDPOINT"] == endpoint
