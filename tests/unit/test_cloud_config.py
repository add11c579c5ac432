"""cloud.yaml: the example validates, every error names its YAML path, environment overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.backends import OnnxBackendConfig, OracleBackendConfig
from cloud.cli import app as cloud_app
from cloud.config import CloudConfig, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cloud.example.yaml"
runner = CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cloud.yaml"
    path.write_text(text)
    return path


def test_the_example_config_is_valid_and_its_paths_resolve_next_to_it() -> None:
    config = load_config(EXAMPLE)
    assert isinstance(config.backend, OnnxBackendConfig)
    assert config.backend.model_path == (EXAMPLE.parent / "../sim/models/edge.onnx").resolve()
    assert config.store.path.is_absolute() and config.policy.signing_key is not None
    assert config.policy.edges["gw-lobby-01"].mining.bands["person"].high == 0.8


def test_every_error_is_listed_with_its_yaml_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "batcher: {max_batch_size: 0}\n"
        "backend: {kind: oracle, delay_ms: -1, colour: red}\n"
        "server: {port: 70000}\n"
        "policy:\n  fleet: {mining: {default_band: {low: 0.2, high: 1.7}}}\n",
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    lines = str(refused.value).splitlines()
    assert "cloud.yaml: batcher.max_batch_size: 0 is below the minimum 1" in lines
    assert "cloud.yaml: backend.delay_ms: -1 is below the minimum 0.0" in lines
    assert "cloud.yaml: server.port: 70000 is above the maximum 65535" in lines
    assert "cloud.yaml: policy.fleet.mining.default_band.high: 1.7 is above the maximum 1.0" in lines
    assert "cloud.yaml: backend.colour: is not a setting here (misspelt, or in the wrong section?)" in lines
    assert len(lines) == 5


def test_a_backend_must_be_chosen(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cloud.yaml: backend: is required"):
        load_config(write(tmp_path, "server: {port: 0}\n"))
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, "backend: {kind: telepathy}\nknown_edges: [gw-1, 'gw 2']\n"))
    assert str(refused.value).splitlines() == [
        "cloud.yaml: backend: kind 'telepathy' is not one of 'onnx', 'oracle', 'openai', 'glm'",
        "cloud.yaml: known_edges: edge ids are letters, digits, _ . - only; not 'gw 2'",
    ]


def test_an_override_band_must_be_given_whole(tmp_path: Path) -> None:
    text = "backend: {kind: oracle}\npolicy:\n  edges:\n    gw-1: {mining: {default_band: {low: 0.1}}}\n"
    with pytest.raises(ConfigError, match=r"policy\.edges\.gw-1\.mining: default_band: an override gives a band whole"):
        load_config(write(tmp_path, text))


def test_environment_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGLM_CLOUD_SERVER__PORT", "6001")
    monkeypatch.setenv("EDGEGLM_CLOUD_BATCHER__MAX_BATCH_SIZE", "3")
    config = load_config(write(tmp_path, "server: {port: 5000}\nbackend: {kind: oracle, ground_truth: {cam0: gt}}\n"))
    assert (config.server.port, config.batcher.max_batch_size) == (6001, 3)
    assert isinstance(config.backend, OracleBackendConfig)
    assert config.backend.ground_truth["cam0"] == tmp_path / "gt"


def test_defaults_are_those_documented() -> None:
    config = CloudConfig.model_validate({"backend": {"kind": "oracle"}})
    assert config.server.max_receive_message_bytes == 8 << 20
    assert config.known_edges == [] and config.admin.enabled
    assert config.store.policy_state_path.name == "policy-state.json"


def test_check_config_prints_each_error_and_exits_1(tmp_path: Path) -> None:
    bad = runner.invoke(cloud_app, ["check-config", str(write(tmp_path, "batcher: {max_batch_size: 0}\n"))])
    good = runner.invoke(cloud_app, ["check-config", str(EXAMPLE)])
    assert bad.exit_code == 1
    assert "cloud.yaml: batcher.max_batch_size: 0 is below the minimum 1" in bad.stderr
    assert "cloud.yaml: backend: is required" in bad.stderr
    assert good.exit_code == 0 and "ok" in good.stdout


def test_a_document_whose_top_level_keys_are_not_names_is_a_config_error(tmp_path: Path) -> None:
    """Found by `make fuzz`: YAML's "?" makes a key of None, which used to escape as a TypeError."""
    for text in ("?\n", "1: x\n"):
        with pytest.raises(ConfigError, match="top-level keys must be section names"):
            load_config(write(tmp_path, text))
