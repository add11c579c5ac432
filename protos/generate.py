"""Regenerate the Python modules of the wire contract from ``protos/*.proto``.

Run ``python -m protos.generate`` (``make protos``) after editing a ``.proto`` file. protoc runs
from the repository root with ``-I .``, so a file ``protos/x.proto`` becomes the importable
``protos.x_pb2`` (messages, with mypy-protobuf's ``.pyi`` stubs) and, if it declares a service,
``protos.x_pb2_grpc`` (stubs and servicers, with mypy-protobuf's grpc ``.pyi`` stubs). The output
depends only on the ``.proto`` files and the pinned grpcio-tools / mypy-protobuf versions, so a
test can check that the committed modules are fresh.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTOS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOS_DIR.parent
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


class GenerationError(RuntimeError):
    """protoc or one of its plugins failed, or a plugin is missing."""


def proto_files() -> list[str]:
    """The ``.proto`` files of the contract, relative to the repository root, in sorted order."""
    return sorted(path.relative_to(REPO_ROOT).as_posix() for path in PROTOS_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Generate the modules for every ``.proto`` file into ``out_dir``; return the files written.

    Generated files already in ``out_dir`` that the current ``.proto`` files no longer produce
    are removed, so a deleted or renamed ``.proto`` leaves nothing stale behind.
    """
    sources = proto_files()
    if not sources:
        raise GenerationError(f"{PROTOS_DIR}: no .proto files found")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeglm-protos-") as scratch_name:
        scratch = Path(scratch_name)
        with_services = _files_with_services(sources, scratch / "descriptors.binpb")
        _protoc([f"--python_out={scratch}", f"--mypy_out={scratch}"], sources)
        if with_services:
            _protoc([f"--grpc_python_out={scratch}", f"--mypy_grpc_out={scratch}"], with_services)
        produced = sorted((scratch / "protos").iterdir())
        for stale in _generated_files(out_dir):
            if stale.name not in {path.name for path in produced}:
                stale.unlink()
        written = []
        for path in produced:
            target = out_dir / path.name
            shutil.copyfile(path, target)
            written.append(target)
    return written


def _generated_files(directory: Path) -> list[Path]:
    return sorted({path for pattern in GENERATED_PATTERNS for path in directory.glob(pattern)})


def _files_with_services(sources: list[str], descriptor_set: Path) -> list[str]:
    """The sources that declare a gRPC service; only those get ``_pb2_grpc`` modules."""
    _protoc([f"--descriptor_set_out={descriptor_set}"], sources)
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    return sorted(file.name for file in files.file if file.service)


def _protoc(output_args: list[str], sources: list[str]) -> None:
    plugin_dir = Path(sys.executable).parent
    plugins = []
    for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        plugin = plugin_dir / name
        if not plugin.is_file():
            raise GenerationError(
                f"{plugin}: mypy-protobuf plugin not found next to {sys.executable} "
                "(run `make setup` to install the dev dependencies into .venv)"
            )
        plugins.append(f"--plugin={name}={plugin}")
    well_known_types = resources.files("grpc_tools") / "_proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I.",
        f"-I{well_known_types}",
        *plugins,
        *output_args,
        *sources,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GenerationError(f"protoc failed (exit {result.returncode}):\n{result.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    """Regenerate the modules (into ``protos/`` unless ``--out`` says otherwise)."""
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=PROTOS_DIR, help="directory for the generated modules (default: protos/)"
    )
    args = parser.parse_args(argv)
    try:
        written = generate(args.out)
    except GenerationError as error:
        print(f"protos.generate: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
