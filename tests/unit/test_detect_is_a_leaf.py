"""common/detect is the one YOLO runtime, shared by the edge agent and the cloud's onnx backend: a leaf.

Both images carry it, so nothing there may import the edge, the cloud, sim or protos: read from the
source, so no import can hide behind a branch or a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DETECT = ROOT / "common" / "detect"
PROJECT = ("edge", "cloud", "sim", "protos", "common", "bench", "tests")


def _imports(source: str, package: str) -> list[str]:
    """Absolute module names a module of ``package`` imports, relative imports resolved against it."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _project_imports(source: str, package: str) -> set[str]:
    return {name for name in _imports(source, package) if name.split(".")[0] in PROJECT}


def _package(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).parts[:-1])


def test_the_yolo_runtime_imports_nothing_of_the_project_but_itself() -> None:
    strays = {
        str(path.relative_to(ROOT)): sorted(
            n for n in _project_imports(path.read_text(), _package(path)) if not n.startswith("common.detect")
        )
        for path in sorted(DETECT.rglob("*.py"))
    }
    assert {file: names for file, names in strays.items() if names} == {}
    assert len(strays) >= 9  # every module of the runtime was read


def test_relative_imports_are_resolved_and_caught() -> None:
    # The check itself: a relative import out of common/detect is seen as the module it names.
    source = "from ..files import write_atomic\nfrom . import decode\nimport numpy\n"

    assert _project_imports(source, "common.detect") == {
        "common.files",
        "common.files.write_atomic",
        "common.detect",
        "common.detect.decode",
    }
