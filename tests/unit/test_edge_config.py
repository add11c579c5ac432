"""edge.yaml: the example validates, every error names its YAML path, the environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.config import ConfigError, load_config
from tests.helpers.policy_keys import generate_keypair

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "edge.example.yaml"
runner = CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return path


def test_example_config_is_valid_and_paths_resolve_next_to_it() -> None:
    config = load_config(EXAMPLE)
    assert config.edge_id == "gw-lobby-01"
    assert [c.id for c in config.cameras] == ["lobby", "door"]
    assert config.detector.model_path == (EXAMPLE.parent / "../sim/models/edge.onnx").resolve()
    assert config.policy.initial.mining.watch_list == ("person", "motorcycle")


def test_every_error_is_reported_with_its_yaml_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "edge_id: gw-1\ncameras:\n  - {id: a, url: /y}\n  - {id: b, url: 'rtsp:/x'}\n"
        "uplink: {target: 'nohost', heartbeat_interval_s: 0}\n"
        "policy: {initial: {mining: {default_band: {low: 0.9, high: 0.2}}}}\nbogus: 1\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        "edge.yaml: cameras[1].url: 'rtsp:/x' is not a valid URL (expected rtsp://host/path)",
        "edge.yaml: uplink.target: 'nohost' is not host:port (expected e.g. cloud.example:50051)",
        "edge.yaml: uplink.heartbeat_interval_s: 0 is below the minimum 0.5",
        "edge.yaml: policy.initial.mining.default_band: band low 0.9 is above high 0.2 (give both bounds, low <= high)",
        "edge.yaml: bogus: is not a setting here (misspelt, or in the wrong section?)",
    ]


def test_an_mqtt_uplink_error_has_the_path_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: gw-1\ncameras:\n  - {id: a, url: /x}\nuplink: {kind: mqtt, port: 0}\n")
    with pytest.raises(ConfigError, match=r"^edge\.yaml: uplink\.port: 0 is below the minimum 1$"):
        load_config(path)


def test_duplicate_camera_ids_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "edge_id: gw-1\ncameras:\n  - {id: a, url: /x}\n  - {id: a, url: /y}\n")
    with pytest.raises(ConfigError, match="repeated: a"):
        load_config(path)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "edge_id: gw-1\ncameras:\n  - {id: a, url: /x}\nuplink: {target: 'a:1'}\n")
    monkeypatch.setenv("EDGEGLM_EDGE_UPLINK__TARGET", "cloud.internal:50051")
    uplink = load_config(path).uplink
    assert uplink.kind == "grpc"
    assert uplink.target == "cloud.internal:50051"


def test_mqtt_uplink_is_chosen_by_kind(tmp_path: Path) -> None:
    path = write(
        tmp_path, "edge_id: gw-1\ncameras:\n  - {id: a, url: /x}\nuplink: {kind: mqtt, host: broker, port: 1884}\n"
    )
    uplink = load_config(path).uplink
    assert uplink.kind == "mqtt"
    assert (uplink.host, uplink.port) == ("broker", 1884)


def test_check_config_command_exits_nonzero_with_the_errors(tmp_path: Path) -> None:
    bad = write(tmp_path, "edge_id: ''\ncameras: []\n")
    result = runner.invoke(app, ["check-config", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "edge.yaml: edge_id: String should have at least 1 character (got '')",
        "edge.yaml: cameras: List should have at least 1 item after validation, not 0",
    ]


MODEL = Path(__file__).resolve().parents[2] / "sim" / "models" / "edge.onnx"


def test_check_config_opens_the_files_run_would_open_and_names_each_problem(tmp_path: Path) -> None:
    """A missing camera folder, a non-ONNX model, a private key given as the public key, a URL as target."""
    private, public = generate_keypair(tmp_path / "keys")
    (tmp_path / "frames").mkdir()
    (tmp_path / "not-a-model.onnx").write_bytes(b"GIF89a")
    good = write(
        tmp_path,
        f"edge_id: gw-1\ncameras: [{{id: a, url: {tmp_path / 'frames'}}}]\n"
        f"detector: {{model_path: {MODEL}}}\npolicy: {{public_key: {public}}}\n",
    )
    ok = runner.invoke(app, ["check-config", str(good)])
    assert ok.exit_code == 0 and "ok (edge gw-1, 1 cameras" in ok.stdout, ok.output
    bad = write(
        tmp_path,
        f"edge_id: gw-1\ncameras: [{{id: a, url: {tmp_path / 'gone'}}}]\n"
        f"detector: {{model_path: {tmp_path / 'not-a-model.onnx'}}}\npolicy: {{public_key: {private}}}\n",
    )
    refused = runner.invoke(app, ["check-config", str(bad)])
    assert refused.exit_code == 1
    problems = refused.stderr
    assert "detector.model_path:" in problems and "not-a-model.onnx" in problems
    assert "policy.public_key:" in problems and "not a PEM public key" in problems
    assert f"cameras[0].url: {tmp_path / 'gone'} does not exist (camera a)" in problems
    https = write(tmp_path, "edge_id: gw-1\ncameras: [{id: a, url: /x}]\nuplink: {target: 'https://cloud:443'}\n")
    scheme = runner.invoke(app, ["check-config", str(https)])
    assert scheme.exit_code == 1 and "has a scheme; give host:port" in scheme.stderr


def test_unreadable_and_non_mapping_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"(?m)^edge\.yaml: edge_id: is required$"):
        load_config(write(tmp_path, ""))
