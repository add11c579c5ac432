"""edge.yaml: the example validates, every error names its YAML path, the environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from edge.config import ConfigError, load_config

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
    good = runner.invoke(app, ["check-config", str(EXAMPLE)])
    assert good.exit_code == 0
    assert "ok" in good.stdout


def test_unreadable_and_non_mapping_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"(?m)^edge\.yaml: edge_id: is required$"):
        load_config(write(tmp_path, ""))
