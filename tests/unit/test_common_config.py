"""One shape for every config error: `source: path[0].as.written: what is wrong`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from common.config import ConfigError, FileSettings, format_errors, load_settings, read_yaml_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Camera(_Strict):
    id: str
    url: str = "/dev/video0"
    zones: list[list[int]] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _rtsp(cls, value: str) -> str:
        if value.startswith("rtsp:") and not value.startswith("rtsp://"):
            raise ValueError(f"{value!r} is not a valid URL (expected rtsp://host/path)")
        return value


class Grpc(_Strict):
    kind: Literal["grpc"] = "grpc"
    target: str = "localhost:50051"


class Mqtt(_Strict):
    kind: Literal["mqtt"] = "mqtt"
    port: int = Field(1883, ge=1, le=65535)


class Onnx(_Strict):
    kind: Literal["onnx"] = "onnx"
    batch: int = Field(1, gt=0)


class Oracle(_Strict):
    kind: Literal["oracle"] = "oracle"
    delay_ms: float = Field(0.0, ge=0)


def _kind(value: Any) -> str:
    return str(value.get("kind", "grpc")) if isinstance(value, dict) else str(getattr(value, "kind", "grpc"))


class Program(_Strict):
    name: str
    cameras: list[Camera] = Field(default_factory=list)
    uplink: Annotated[Annotated[Grpc, Tag("grpc")] | Annotated[Mqtt, Tag("mqtt")], Discriminator(_kind)] = Field(
        default_factory=Grpc
    )
    backend: Onnx | Oracle | None = Field(None, discriminator="kind")
    labels: dict[str, Camera] = Field(default_factory=dict)
    threshold: float | None = Field(None, lt=1)


def lines(raw: dict[str, Any], source: str = "edge.yaml") -> list[str]:
    with pytest.raises(ValidationError) as refused:
        Program.model_validate(raw)
    return format_errors(source, refused.value, Program).splitlines()


def test_list_items_are_indexed_and_our_own_message_is_kept() -> None:
    raw = {"name": "x", "cameras": [{"id": "a"}, {"id": "b", "url": "rtsp:/x"}]}
    assert lines(raw) == ["edge.yaml: cameras[1].url: 'rtsp:/x' is not a valid URL (expected rtsp://host/path)"]


def test_nested_lists_index_each_level() -> None:
    raw = {"name": "x", "cameras": [{"id": "a", "zones": [[1, 2], [3, "four"]]}]}
    assert lines(raw) == [
        "edge.yaml: cameras[0].zones[1][1]: Input should be a valid integer, unable to parse string as an integer "
        "(got 'four')"
    ]


def test_a_union_member_is_named_by_the_path_people_write_not_by_its_tag() -> None:
    raw = {"name": "x", "uplink": {"kind": "mqtt", "port": 0}, "backend": {"kind": "oracle", "delay_ms": -1}}
    assert lines(raw) == [
        "edge.yaml: uplink.port: 0 is below the minimum 1",
        "edge.yaml: backend.delay_ms: -1 is below the minimum 0.0",
    ]


def test_an_unknown_or_missing_kind_is_said_plainly() -> None:
    raw = {"name": "x", "uplink": {"kind": "pigeon"}, "backend": {"batch": 2}}
    assert lines(raw) == [
        "edge.yaml: uplink: kind 'pigeon' is not one of 'grpc', 'mqtt'",
        "edge.yaml: backend: kind is required to tell which one it is",
    ]


def test_extra_keys_are_refused_where_they_were_written() -> None:
    raw = {"name": "x", "colour": "red", "cameras": [{"id": "a", "fps": 5}], "uplink": {"kind": "grpc", "port": 1}}
    shown = "is not a setting here (misspelt, or in the wrong section?)"
    assert lines(raw) == [
        f"edge.yaml: cameras[0].fps: {shown}",
        f"edge.yaml: uplink.port: {shown}",
        f"edge.yaml: colour: {shown}",
    ]


def test_missing_fields_and_mapping_keys() -> None:
    raw = {"cameras": [{"url": "/x"}], "labels": {"door": {"url": "/y"}}}
    assert lines(raw) == [
        "edge.yaml: name: is required",
        "edge.yaml: cameras[0].id: is required",
        "edge.yaml: labels.door.id: is required",
    ]


def test_the_value_is_shown_with_bounds_and_pydantic_words() -> None:
    assert lines({"name": "x", "threshold": 1.5}) == ["edge.yaml: threshold: 1.5 must be below 1.0"]
    assert lines({"name": ["not", "a", "string"]}) == ["edge.yaml: name: Input should be a valid string"]
    long = "x" * 200
    assert lines({"name": "x", "threshold": long}) == [
        "edge.yaml: threshold: Input should be a valid number, unable to parse string as a number "
        f"(got '{long[:76]}... (202 chars))"
    ]


def test_without_the_model_the_path_keeps_every_part() -> None:
    with pytest.raises(ValidationError) as refused:
        Program.model_validate({"name": "x", "uplink": {"kind": "mqtt", "port": 0}})
    assert format_errors("edge.yaml", refused.value) == "edge.yaml: uplink.mqtt.port: 0 is below the minimum 1"


def test_a_root_validator_error_is_at_the_top_level() -> None:
    class Pair(BaseModel):
        low: float
        high: float

    with pytest.raises(ValidationError) as refused:
        Pair.model_validate("nope")
    assert format_errors("pair.yaml", refused.value, Pair).startswith("pair.yaml: (top level): ")


class Settings(FileSettings):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="EDGEGLM_TEST_", env_nested_delimiter="__")

    name: str
    uplink: Annotated[Annotated[Grpc, Tag("grpc")] | Annotated[Mqtt, Tag("mqtt")], Discriminator(_kind)] = Field(
        default_factory=Grpc
    )


def test_load_settings_names_the_file_in_each_error_and_the_environment_beats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "program.yaml"
    path.write_text("name: a\nuplink: {kind: mqtt, port: 70000}\n")
    with pytest.raises(ConfigError, match=r"^program\.yaml: uplink\.port: 70000 is above the maximum 65535$"):
        load_settings(path, Settings)
    path.write_text("name: from-file\nuplink: {kind: mqtt, port: 1884}\n")
    monkeypatch.setenv("EDGEGLM_TEST_NAME", "from-env")
    settings = load_settings(path, Settings)
    assert (settings.name, settings.uplink) == ("from-env", Mqtt(port=1884))


def test_files_that_are_not_a_mapping_are_refused_with_their_path(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    with pytest.raises(ConfigError, match=r"x\.yaml: cannot be read"):
        read_yaml_mapping(path)
    path.write_text("a: [1\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: not valid YAML"):
        read_yaml_mapping(path)
    path.write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: expected a mapping at the top level, got list"):
        read_yaml_mapping(path)
    path.write_text("")
    assert read_yaml_mapping(path) == {}
