"""The cert-manager and admin-ingress components agree with what the workloads mount and the code expects.

cert-manager's kinds are CRDs (no schema here), so their fields are checked by hand: every Secret a
workload mounts for TLS is a Certificate's, issued by an issuer in the render from one CA, for the
names the clients dial. The ingress publishes the admin API over HTTPS only, for the host the API
answers to (its Host check, loaded through the cloud's own config model), and never /metrics or
/healthz. A CA made as the component makes it can issue edge certificates with `edgeglm-cloud pki`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from cloud.cli import app as cloud_app
from cloud.config import CloudConfig
from common.config import load_settings
from common.tls import SPIFFE_PREFIX, FleetCA
from tests.helpers.k3s import ROOT, by_kind, container, find, mounted_config, pod_spec, render

VARIANT = "fleet+cert-manager+admin-ingress"


def objects() -> tuple[dict[str, Any], ...]:
    return render(VARIANT)


def certificates() -> dict[str, dict[str, Any]]:
    return {c["spec"]["secretName"]: c for c in by_kind(objects(), "Certificate")}


def mounted_secrets(workload: dict[str, Any]) -> set[str]:
    names = set()
    for volume in pod_spec(workload)["volumes"]:
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def test_every_tls_secret_the_workloads_mount_is_a_certificate_of_the_fleet_ca() -> None:
    certs = certificates()
    cloud = find(objects(), "Deployment", "edgeglm-cloud")
    broker = find(objects(), "StatefulSet", "mosquitto")
    wanted = {"edgeglm-grpc-tls", "edgeglm-mqtt-tls", "mosquitto-tls"}
    assert wanted <= mounted_secrets(cloud) | mounted_secrets(broker)
    assert wanted <= set(certs)
    issuers = {i["metadata"]["name"]: i for i in by_kind(objects(), "Issuer")}
    ca = certs["edgeglm-ca"]
    assert ca["spec"]["isCA"] is True and issuers[ca["spec"]["issuerRef"]["name"]]["spec"] == {"selfSigned": {}}
    for name in wanted:
        assert certs[name]["spec"]["issuerRef"] == {"kind": "Issuer", "name": "edgeglm-ca"}, name
        assert certs[name]["spec"]["privateKey"]["rotationPolicy"] == "Always", name
    assert issuers["edgeglm-ca"]["spec"] == {"ca": {"secretName": "edgeglm-ca"}}


def test_the_certificates_name_what_their_clients_dial_and_the_bridge_is_the_acl_s_cloud() -> None:
    certs = certificates()
    cloud = find(objects(), "Deployment", "edgeglm-cloud")
    edge = find(objects(), "DaemonSet", "edgeglm-edge")
    cloud_config = yaml.safe_load(mounted_config(objects(), cloud, "/etc/edgeglm/cloud.yaml")[1])
    edge_config = yaml.safe_load(mounted_config(objects(), edge, "/etc/edgeglm/edge.yaml")[1])
    dialled = edge_config["uplink"]["target"].removeprefix("dns:///").rsplit(":", 1)[0]
    grpc = certs["edgeglm-grpc-tls"]["spec"]
    assert dialled in grpc["dnsNames"] and "server auth" in grpc["usages"]
    assert "edgeglm-cloud-headless.edgeglm.svc.cluster.local" in grpc["dnsNames"], "uplink.load_balancing"
    assert cloud_config["mqtt"]["host"] in certs["mosquitto-tls"]["spec"]["dnsNames"]
    bridge = certs["edgeglm-mqtt-tls"]["spec"]
    acl = (ROOT / "deploy" / "k3s" / "base" / "mosquitto" / "acl-tls").read_text().splitlines()
    assert f"user {bridge['commonName']}" in acl and bridge["usages"][0] == "client auth"


def test_the_deny_list_is_a_configmap_the_cloud_reads_beside_the_certificate() -> None:
    cloud = find(objects(), "Deployment", "edgeglm-cloud")
    cloud_config = yaml.safe_load(mounted_config(objects(), cloud, "/etc/edgeglm/cloud.yaml")[1])
    revoked = find(objects(), "ConfigMap", "edgeglm-grpc-revoked")  # no hash suffix: edited in place
    assert revoked["data"] == {"revoked.txt": ""}
    volume = next(v for v in pod_spec(cloud)["volumes"] if v["name"] == "grpc-tls")
    assert "secret" not in volume
    sources = volume["projected"]["sources"]
    revoked_item = {"key": "revoked.txt", "path": "revoked.txt"}
    assert {"configMap": {"name": "edgeglm-grpc-revoked", "items": [revoked_item]}} in sources
    mount = next(m for m in container(cloud, "cloud")["volumeMounts"] if m["name"] == "grpc-tls")
    assert cloud_config["server"]["tls"]["revoked_file"] == f"{mount['mountPath']}/revoked.txt"
    assert "subPath" not in mount, "a subPath mount would never see a renewed certificate"


def _routed(ingress: dict[str, Any], path: str) -> bool:
    for rule in ingress["spec"]["rules"]:
        for each in rule["http"]["paths"]:
            prefix = each["path"].rstrip("/")
            if each["pathType"] == "Exact" and path == each["path"]:
                return True
            if each["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
                return True
    return False


@pytest.mark.parametrize(
    "path",
    ["/", "/login", "/auth/login", "/static/app.js", "/api/verdicts", "/api/admin/tokens", "/policies/fleet", "/docs"],
)
def test_the_ingress_publishes_what_people_use(path: str) -> None:
    assert _routed(find(objects(), "Ingress", "edgeglm-cloud-admin"), path)


@pytest.mark.parametrize("path", ["/metrics", "/healthz"])
def test_the_ingress_does_not_publish_probes_or_metrics(path: str) -> None:
    assert not _routed(find(objects(), "Ingress", "edgeglm-cloud-admin"), path)


def test_the_ingress_is_https_only_to_the_admin_service_for_a_host_the_api_answers_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ingress = find(objects(), "Ingress", "edgeglm-cloud-admin")
    service = find(objects(), "Service", "edgeglm-cloud-admin")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]} == hosts
    assert ingress["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"
    ports = {p["name"] for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for each in rule["http"]["paths"]:
            assert each["backend"]["service"] == {"name": "edgeglm-cloud-admin", "port": {"name": "admin"}}
    assert "admin" in ports
    cloud = find(objects(), "Deployment", "edgeglm-cloud")
    text = mounted_config(objects(), cloud, "/etc/edgeglm/cloud.yaml")[1]
    for var in container(cloud, "cloud").get("env", []):
        if var["name"].startswith("EDGEGLM_CLOUD_ADMIN__"):
            monkeypatch.setenv(var["name"], var["value"])
    config_file = tmp_path / "cloud.yaml"
    config_file.write_text(text)
    allowed = load_settings(config_file, CloudConfig)
    assert hosts <= set(allowed.admin.allowed_hosts)
    assert "edgeglm-cloud-admin.edgeglm.svc.cluster.local" in allowed.admin.allowed_hosts, "in-cluster names kept"
    policy = find(objects(), "NetworkPolicy", "edgeglm-cloud-admin-ingress")
    peer = policy["spec"]["ingress"][0]["from"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": service["spec"]["ports"][0]["port"], "protocol": "TCP"}]


def test_a_ca_made_as_the_component_makes_it_issues_edge_certificates_with_the_cli(tmp_path: Path) -> None:
    """cert-manager keeps an ECDSA P-256 CA as tls.crt/tls.key, the key in SEC1 PEM ("EC PRIVATE KEY", not
    the PKCS#8 `pki init` writes); exported as ca.crt/ca.key, the CLI issues a gateway's certificate from it
    (README, "cert-manager")."""
    ca = FleetCA(tmp_path / "fleet-ca").create()
    key = serialization.load_pem_private_key(ca.key_file.read_bytes(), password=None)
    sec1 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    ca.key_file.write_bytes(sec1)
    folder = str(ca.folder)
    result = CliRunner().invoke(cloud_app, ["pki", "issue-edge", "--dir", folder, "gw-lobby-01", "--out", folder])
    assert result.exit_code == 0, result.output
    root = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    issued = x509.load_pem_x509_certificate((ca.folder / "gw-lobby-01.crt").read_bytes())
    uris = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_PREFIX + "edge/gw-lobby-01"]
    issued.verify_directly_issued_by(root)
