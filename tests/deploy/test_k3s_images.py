"""What the Dockerfiles copy and install is enough to run each program (no container engine needed).

The images are not built here. Instead, each Dockerfile's build-context files (its COPY lines before
`pip install`) are put in a scratch folder, installed from there without dependencies into a target
folder (the same `pip install .` the Dockerfile runs, minus the downloads), and the program is run from
that folder alone: every module of its package imports, none of the project's modules comes from
elsewhere (both have protos/ and common/, whose detect/ is the YOLO runtime the cloud's onnx backend
runs; the edge image has no cloud/ or sim/; the cloud image no edge/ or sim/), and
`check-config` accepts the ConfigMap's file. A second check reads the imports of every Python file
the image copies and requires each third-party one to be declared in the extra the Dockerfile installs.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.helpers.k3s import ROOT, container, dockerfile_copies, dockerfile_lines, find, mounted_config, render

IMAGES = {
    "edge.Dockerfile": ("edge", ("DaemonSet", "edgeglm-edge", "edge"), "/etc/edgeglm/edge.yaml"),
    "cloud.Dockerfile": ("cloud", ("Deployment", "edgeglm-cloud", "cloud"), "/etc/edgeglm/cloud.yaml"),
}
# Project modules an image may hold besides its own package's: the wire contract, what both sides run
# on (common/, the YOLO runtime included).
SHARED = {
    "edge.Dockerfile": ("protos", "common"),
    "cloud.Dockerfile": ("protos", "common"),
}
PROJECT_PACKAGES = {"edge", "cloud", "sim", "protos", "common"}
# What both images carry beside their own package.
SHARED_PACKAGES = {"protos", "common"}
TIMEOUT_S = 180

# Imports every module of the package (but __main__, which runs the CLI) and prints where the
# project's modules came from.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
project = {"edge", "cloud", "sim", "protos"}
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] in project}))
"""


def _build_context(dockerfile: str, folder: Path) -> None:
    """The files the Dockerfile copies into its source folder before installing."""
    for sources, destination in dockerfile_copies(dockerfile):
        if destination.startswith("/"):
            continue  # into the image's own paths (models): not part of the install
        for source in sources:
            target = folder / destination / source.name if destination.endswith("/") else folder / destination
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


@pytest.fixture(scope="module", params=sorted(IMAGES))
def installed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(Dockerfile, folder with the project installed from that Dockerfile's build context only)."""
    dockerfile: str = request.param
    context = tmp_path_factory.mktemp("context")
    target = tmp_path_factory.mktemp("site")
    _build_context(dockerfile, context)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(context)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, f"pip install of {dockerfile}'s build context failed:\n{result.stderr}"
    return dockerfile, target


def _run(target: Path, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Python with the isolated install first on the path, from a folder outside the repository."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEGLM_")}
    environment = {**clean, **(env or {}), "PYTHONPATH": str(target)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=target,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_the_program_runs_from_its_image_files_alone(installed: tuple[str, Path], tmp_path: Path) -> None:
    dockerfile, target = installed
    package, (kind, name, container_name), config_path = IMAGES[dockerfile]
    result = _run(target, ["-c", IMPORT_ALL, package])
    assert result.returncode == 0, f"{package} does not import from {dockerfile}'s files:\n{result.stderr}"
    modules: dict[str, str | None] = json.loads(result.stdout.splitlines()[-1])
    assert len([n for n in modules if n.split(".")[0] == package]) > 10
    strays = {n: f for n, f in modules.items() if f and not f.startswith(str(target))}
    assert strays == {}, f"{dockerfile}: modules the image would not have"
    allowed = (package, *SHARED[dockerfile])
    foreign = [n for n in modules if not any(n == a or n.startswith(a + ".") for a in allowed)]
    assert foreign == [], f"{dockerfile}: the program imports project modules outside {allowed}"
    if package == "cloud":
        assert not (target / "edge").exists(), "the cloud image carries the edge"
    # Its check-config accepts the ConfigMap's file (the glm weights folder is not part of any image).
    objects = render("single-node")
    workload = find(objects, kind, name)
    file_name, text = mounted_config(objects, workload, config_path)
    (tmp_path / file_name).write_text(text)
    env = {"EDGEGLM_EDGE_EDGE_ID": "gw-lobby-01"} if package == "edge" else {}
    alone = ["--no-files"] if package == "edge" else []  # its model, key and cameras are not on this machine
    checked = _run(target, ["-m", package, "check-config", str(tmp_path / file_name), *alone], env)
    assert checked.returncode == 0, checked.stderr
    assert container(workload, container_name)["args"][0] in ("run", "serve")


def test_the_cloud_image_carries_no_edge(tmp_path: Path) -> None:
    context = tmp_path / "context"
    _build_context("cloud.Dockerfile", context)
    assert not (context / "edge").exists()
    assert sorted((context / "common" / "detect").rglob("*.py"))  # the YOLO runtime comes with common/


def _copied_python(dockerfile: str) -> list[Path]:
    """Every Python file of the repository that the Dockerfile copies into its build context."""
    files: list[Path] = []
    for sources, destination in dockerfile_copies(dockerfile):
        if destination.startswith("/"):
            continue
        for source in sources:
            if source.is_dir():
                files += sorted(source.rglob("*.py"))
            elif source.suffix == ".py":
                files.append(source)
    return files


def _imported_distributions(dockerfile: str) -> set[str]:
    """Normalised names of the distributions the image's Python files import (at any depth)."""
    providers = importlib.metadata.packages_distributions()
    stdlib = sys.stdlib_module_names
    found: set[str] = set()
    for path in _copied_python(dockerfile):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in PROJECT_PACKAGES or top == "__future__":
                    continue
                assert top in providers, f"{path.relative_to(ROOT)} imports {top}, which no installed package provides"
                found.update(_normalise(d) for d in providers[top])
    return found


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _installed_with(requirements: set[str]) -> set[str]:
    """The distributions `pip install` brings for these requirements: them and their dependencies
    (as installed here), without optional extras."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = _normalise(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (e.g. onnxruntime-gpu): nothing imports it then
        for need in map(Requirement, needs):
            if need.marker is None or need.marker.evaluate({"extra": ""}):
                todo.append(need)
    return seen


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_every_third_party_import_is_declared_in_the_extra_the_image_installs(dockerfile: str) -> None:
    package = IMAGES[dockerfile][0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installs = " ".join(rest for instruction, rest in dockerfile_lines(dockerfile) if instruction == "RUN")
    assert f'".[{package}]"' in installs
    requirements = set(project["dependencies"]) | set(project["optional-dependencies"][package])
    requirements |= {word.strip('"').split("==")[0] for word in installs.split() if word.startswith('"torch')}
    missing = _imported_distributions(dockerfile) - _installed_with(requirements)
    assert missing == set(), f"{package} imports {missing}, which {dockerfile} never installs"


def _imports(folder: str) -> Iterator[tuple[Path, str]]:
    """(file, absolute module name) for every import statement in the project folder's source."""
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((path, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path, node.module


@pytest.mark.parametrize("shared", sorted(SHARED_PACKAGES))
def test_what_both_images_share_imports_nothing_of_either_side(shared: str) -> None:
    sides = PROJECT_PACKAGES - SHARED_PACKAGES
    found = {f"{path.relative_to(ROOT)}: {name}" for path, name in _imports(shared) if name.split(".")[0] in sides}
    assert found == set()
