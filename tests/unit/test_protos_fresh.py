"""The generated modules committed in protos/ match a fresh generation from the .proto files."""

from pathlib import Path

import pytest

from protos import generate

STALE_HINT = "protos/ is out of date with its .proto files: run `make protos` and commit the result"


@pytest.fixture(scope="module")
def fresh_modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out_dir = tmp_path_factory.mktemp("fresh_protos")
    return {path.name: path.read_bytes() for path in generate.generate(out_dir)}


def _committed_modules() -> dict[str, bytes]:
    paths = {path for pattern in generate.GENERATED_PATTERNS for path in generate.PROTOS_DIR.glob(pattern)}
    return {path.name: path.read_bytes() for path in paths}


def test_committed_modules_are_byte_identical_to_a_fresh_generation(fresh_modules: dict[str, bytes]) -> None:
    committed = _committed_modules()

    differing = sorted(
        name for name in fresh_modules.keys() & committed.keys() if fresh_modules[name] != committed[name]
    )

    assert not differing, f"{STALE_HINT} (differing: {', '.join(differing)})"


def test_no_generated_module_is_missing_or_extra(fresh_modules: dict[str, bytes]) -> None:
    committed = set(_committed_modules())

    missing = sorted(fresh_modules.keys() - committed)
    extra = sorted(committed - fresh_modules.keys())

    assert not missing, f"{STALE_HINT} (missing: {', '.join(missing)})"
    assert not extra, f"{STALE_HINT} (extra, from no .proto file: {', '.join(extra)})"


def test_every_proto_file_yields_a_message_module_and_stub(fresh_modules: dict[str, bytes]) -> None:
    stems = [Path(source).stem for source in generate.proto_files()]

    expected = {f"{stem}_pb2{suffix}" for stem in stems for suffix in (".py", ".pyi")}

    assert expected <= fresh_modules.keys()


def test_only_files_with_a_service_yield_grpc_modules(fresh_modules: dict[str, bytes]) -> None:
    grpc_modules = sorted(name for name in fresh_modules if "_pb2_grpc" in name)

    assert grpc_modules == ["session_pb2_grpc.py", "session_pb2_grpc.pyi"]


def test_generation_removes_stale_modules_from_the_output_folder(tmp_path: Path) -> None:
    stale = tmp_path / "removed_pb2.py"
    stale.write_text("# left over from a deleted .proto file\n")

    generate.generate(tmp_path)

    assert not stale.exists()
