"""deploy/k3s/components/retrain: the train-edge CronJob renders on the fleet, validates, and agrees with
the code: the flags it passes are the CLI's, the classes are the edge model's, every file it names is
on a volume or in its image, and the database admits it."""

from __future__ import annotations

import functools
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from cloud.cli import app as cloud_app
from sim.world.photos import CLASSES
from tests.helpers.k3s import CRD_KINDS, K3S, ROOT, by_kind, find, kustomize

COMPONENT = K3S / "components" / "retrain"
DOCKERFILE = COMPONENT / "train.Dockerfile"
K8S_VERSIONS = ("1.31.0", "latest")
Objects = tuple[dict[str, Any], ...]


@functools.cache
def _rendered(scratch: Path) -> Objects:
    tree = scratch / "k3s"
    shutil.copytree(K3S, tree)
    folder = tree / "composed" / "fleet+retrain"
    folder.mkdir(parents=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../fleet"],
        "components": ["../../components/retrain"],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return tuple(kustomize(folder))


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Objects:
    """The fleet overlay with the retrain component (kustomize wants relative paths: a copy of the tree)."""
    return _rendered(tmp_path_factory.mktemp("k3s-retrain"))


def job_pod(objects: Objects) -> dict[str, Any]:
    """The pod spec of the CronJob's jobs."""
    spec: dict[str, Any] = find(objects, "CronJob", "edgeglm-train-edge")["spec"]["jobTemplate"]["spec"]["template"]
    return spec


def containers(objects: Objects) -> dict[str, dict[str, Any]]:
    """Init and main containers by name."""
    spec = job_pod(objects)["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def volume_of(objects: Objects, container_name: str, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) under which that container sees `path` (the longest mount that holds it)."""
    spec = job_pod(objects)["spec"]
    mounts = [
        m
        for m in containers(objects)[container_name].get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"{path} is on no volume of the {container_name} container"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return mount, next(v for v in spec["volumes"] if v["name"] == mount["name"])


def train_edge_argv(objects: Objects) -> list[str]:
    """The train-edge command line of the main container's script."""
    script = containers(objects)["train-edge"]["args"][0]
    words = shlex.split(script.replace("\\\n", " "), comments=True)
    start = words.index("train-edge")
    end = next(index for index in range(start, len(words)) if words[index].startswith("reports="))
    return words[start:end]


def flags_taken(argv: list[str]) -> dict[str, str | None]:
    """--flag -> its value (None for a switch)."""
    taken: dict[str, str | None] = {}
    for index, word in enumerate(argv):
        if word.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else "--"
            taken[word] = None if following.startswith("--") else following
    return taken


def cli_options(*path: str) -> set[str]:
    """Every --option of an edgeglm-cloud (sub)command, as its command line parser knows them."""
    command: Any = typer.main.get_command(cloud_app)
    for name in path:
        assert name in command.commands, f"edgeglm-cloud has no command {' '.join(path)}"
        command = command.commands[name]
    return {
        opt for param in command.params for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    }


def test_the_component_adds_the_cronjob_its_claim_and_its_policy_once(objects: Objects) -> None:
    for kind, name in (
        ("CronJob", "edgeglm-train-edge"),
        ("PersistentVolumeClaim", "edgeglm-models"),
        ("NetworkPolicy", "edgeglm-train-edge"),
    ):
        assert find(objects, kind, name)["metadata"]["namespace"] == "edgeglm"
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "an object is rendered twice"


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_every_object_validates_strictly(objects: Objects, k8s: str) -> None:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        from tests.helpers.k3s import missing_tool

        missing_tool("kubernetes-validate")
    version = kubernetes_validate.latest_version() if k8s == "latest" else k8s
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(
                    f"{obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes {version}: {err.message}"
                )


def test_runs_never_overlap_and_a_hung_run_is_stopped(objects: Objects) -> None:
    cron = find(objects, "CronJob", "edgeglm-train-edge")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    assert job_pod(objects)["spec"]["restartPolicy"] == "Never"
    argv = flags_taken(train_edge_argv(objects))
    # The fine-tune's own deadline (fine_tune.timeout_s, default one hour) ends before the Job's.
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] > float(argv.get("--timeout") or 3600)


def test_the_flags_are_the_clis_own(objects: Objects) -> None:
    assert set(flags_taken(train_edge_argv(objects))) <= cli_options("train-edge")
    export = containers(objects)["export"]["args"]
    assert export[:2] == ["dataset", "export"]
    assert {word for word in export if word.startswith("--")} <= cli_options("dataset", "export")


def test_the_export_is_in_the_edge_models_classes_and_the_bootstrap_version_is_the_fleets(objects: Objects) -> None:
    export = containers(objects)["export"]["args"]
    assert export[export.index("--classes") + 1].split(",") == list(CLASSES)
    edge_config = yaml.safe_load((K3S / "base" / "edge" / "edge.yaml").read_text())
    assert flags_taken(train_edge_argv(objects))["--current-version"] == edge_config["model_version"]


def _dockerfile_copies() -> dict[str, list[Path]]:
    """Image path -> repository files of every COPY of train.Dockerfile."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    copies: dict[str, list[Path]] = {}
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            *sources, destination = words[1:]
            copies[destination] = [ROOT / source for source in sources]
    return copies


def test_the_files_train_edge_names_are_in_its_image_or_on_a_volume(objects: Objects) -> None:
    argv = flags_taken(train_edge_argv(objects))
    copies = _dockerfile_copies()
    for flag in ("--current", "--weights"):
        path = Path(str(argv[flag]))
        sources = copies[str(path.parent) + "/"]
        assert any(source.name == path.name and source.is_file() for source in sources), f"{flag} {path}"
    assert (ROOT / "sim" / "models" / "edge.pt").stat().st_size < 10 * 2**20
    mount, volume = volume_of(objects, "train-edge", str(argv["--signing-key"]))
    assert volume["secret"]["secretName"] == "edgeglm-policy-signing-key" and mount["readOnly"] is True
    for flag in ("--registry", "--weights-dir"):
        mount, volume = volume_of(objects, "train-edge", str(argv[flag]))
        assert volume["persistentVolumeClaim"]["claimName"] == "edgeglm-models" and not mount.get("readOnly")
    for flag in ("--field", "--out"):
        assert "emptyDir" in volume_of(objects, "train-edge", str(argv[flag]))[1]
    export = containers(objects)["export"]["args"]
    assert volume_of(objects, "export", export[export.index("--out") + 1])[0]["name"] == "work"


def test_the_export_reads_the_clouds_own_config_and_the_files_it_names(objects: Objects) -> None:
    cloud = find(objects, "Deployment", "edgeglm-cloud")["spec"]["template"]["spec"]
    cloud_map = next(v["configMap"]["name"] for v in cloud["volumes"] if v["name"] == "config")
    export = containers(objects)["export"]["args"]
    mount, volume = volume_of(objects, "export", export[export.index("--config") + 1])
    assert volume["configMap"]["name"] == cloud_map and mount["subPath"] == "cloud.yaml"
    config = yaml.safe_load(find(objects, "ConfigMap", cloud_map)["data"]["cloud.yaml"])
    assert volume_of(objects, "export", config["store"]["dsn_file"])[1]["secret"]["secretName"] == "edgeglm-pg-dsn"
    claim = volume_of(objects, "export", config["backend"]["model_path"])[1]["persistentVolumeClaim"]
    assert claim == {"claimName": "glm-weights", "readOnly": True}


def test_the_pod_runs_unprivileged_within_bounds(objects: Objects) -> None:
    pod = job_pod(objects)["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    for name, each in containers(objects).items():
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(each["resources"][bound]), f"{name}: {bound}"
        context = each["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert "/tmp" in {m["mountPath"] for m in each["volumeMounts"]}, name


def test_the_database_admits_the_training_pod_and_nothing_reaches_the_training_pod(objects: Objects) -> None:
    labels = job_pod(objects)["metadata"]["labels"]
    postgres = find(objects, "NetworkPolicy", "edgeglm-postgres")["spec"]["ingress"]
    admitted = [peer["podSelector"]["matchLabels"] for rule in postgres for peer in rule["from"]]
    assert any(selector.items() <= labels.items() for selector in admitted)
    assert {"app.kubernetes.io/name": "edgeglm-cloud"} in admitted
    own = find(objects, "NetworkPolicy", "edgeglm-train-edge")["spec"]
    assert own["podSelector"]["matchLabels"].items() <= labels.items()
    assert own["policyTypes"] == ["Ingress"] and own["ingress"] == []
    # The Services of the cloud select its pods only, never a training pod.
    for service in by_kind(objects, "Service"):
        selector = service["spec"].get("selector", {})
        assert not (selector and selector.items() <= labels.items()), service["metadata"]["name"]


def test_the_image_installs_the_training_and_cloud_extras_and_copies_what_it_installs() -> None:
    runs = " ".join(line for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines() if line.startswith("RUN"))
    assert 'pip install ".[cloud,sim,train]"' in runs
    for destination, sources in _dockerfile_copies().items():
        for source in sources:
            assert source.exists(), f"train.Dockerfile copies {source} to {destination}, which is not in the repository"


def test_every_cloud_replica_serves_the_registry_the_cronjob_publishes_into(
    objects: Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud.config import CloudConfig

    pod = find(objects, "Deployment", "edgeglm-cloud")["spec"]["template"]["spec"]
    (cloud,) = [c for c in pod["containers"] if c["name"] == "cloud"]
    env = {e["name"]: e["value"] for e in cloud["env"] if "value" in e}
    for name, value in env.items():
        if name.startswith("EDGEGLM_CLOUD_"):
            monkeypatch.setenv(name, value)
    cloud_map = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "config")
    raw = yaml.safe_load(find(objects, "ConfigMap", cloud_map)["data"]["cloud.yaml"])
    # Its GPU model is not here: any backend does, the registry is what is read.
    raw["backend"] = {"kind": "onnx", "model_path": str(ROOT / "sim" / "models" / "reference.onnx")}
    registry = CloudConfig.model_validate(raw).models.registry
    published = flags_taken(train_edge_argv(objects))["--registry"]
    assert registry is not None and str(registry) == published, "the cloud reads the registry the job writes"
    mounts = [m for m in cloud["volumeMounts"] if str(registry).startswith(m["mountPath"].rstrip("/") + "/")]
    (mount,) = mounts
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == "edgeglm-models"
    assert not mount.get("readOnly"), "the rollout state (rollout.json) is written beside the registry"
    claim = find(objects, "PersistentVolumeClaim", "edgeglm-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "the replicas and the job mount it on several nodes"
