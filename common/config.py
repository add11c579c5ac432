"""A program's YAML config read into its pydantic tree, and every problem said as one line.

Each problem reads `<source>: <path as written in the file>: <what is wrong>`, e.g.
`edge.yaml: cameras[1].url: 'rtsp:/x' is not a valid URL (expected rtsp://host/path)`: list items
by [index], mapping keys and fields by dots, and without the tags pydantic puts in the path of a
union member (people write `uplink.target`, not `uplink.grpc.target`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, Tag, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

SECRETS_DIR = Path("/run/secrets")
TOP_LEVEL = "(top level)"
MAX_SHOWN_CHARS = 80
S = TypeVar("S", bound=BaseSettings)
_BOUNDS = {
    "greater_than_equal": ("ge", "is below the minimum"),
    "greater_than": ("gt", "must be above"),
    "less_than_equal": ("le", "is above the maximum"),
    "less_than": ("lt", "must be below"),
}


class FileSettings(BaseSettings):
    """A program's settings: its YAML file (the init arguments), with the environment above and secrets below."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment beats the file (an operator's override of one value); secrets fill what neither gave."""
        return env_settings, init_settings, file_secret_settings


class ConfigError(Exception):
    """A config file that cannot be used; the message lists every problem with its path in the file."""


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The file's top-level mapping (an empty file: an empty one); ConfigError when unreadable or not one."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    odd = [key for key in raw if not isinstance(key, str)]
    if odd:  # e.g. a line "? " or "1: x": YAML allows any key, a config section is named by text
        raise ConfigError(f"{path}: top-level keys must be section names, got {', '.join(map(repr, odd))}")
    return raw


def load_settings(path: Path, model: type[S]) -> S:
    """`model` from the YAML file, the environment and the secrets folder; ConfigError lists each problem."""
    raw = read_yaml_mapping(path)
    secrets = SECRETS_DIR if SECRETS_DIR.is_dir() else None
    try:
        return model(**raw, _secrets_dir=secrets)
    except ValidationError as err:
        raise ConfigError(format_errors(path.name, err, model)) from err


def format_errors(source: str, err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem: `source: path.in[0].the.file: what is wrong` (`model`: the tree that was validated)."""
    return "\n".join(error_lines(source, err, model))


def error_lines(source: str, err: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """The lines of `format_errors`, as a list."""
    return [f"{source}: {yaml_path(problem['loc'], model)}: {describe(problem)}" for problem in err.errors()]


def yaml_path(loc: tuple[int | str, ...], model: type[BaseModel] | None = None) -> str:
    """`loc` as written in the file: `cameras[1].url`; with `model`, without the tags of union members."""
    text = ""
    for part in _without_union_tags(loc, model):
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or TOP_LEVEL


def describe(problem: ErrorDetails) -> str:
    """What is wrong, in words, with the value given when it helps."""
    kind = problem["type"]
    given = problem.get("input")
    context = problem.get("ctx") or {}
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"{given!r} {words} {context.get(key)}"
    if kind == "extra_forbidden":
        return "is not a setting here (misspelt, or in the wrong section?)"
    if kind == "missing":
        return "is required"
    if kind == "union_tag_invalid":
        return f"kind {context.get('tag')!r} is not one of {context.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "kind is required to tell which one it is"
    if kind in ("value_error", "assertion_error") and "error" in context:
        # Our own validators' words: they already show the value they refuse.
        return str(context["error"])
    if isinstance(given, dict | list | tuple) or given is None:
        return problem["msg"]
    return f"{problem['msg']} (got {_shown(given)})"


def _shown(value: object) -> str:
    # A whole document refused as one value (invalid JSON, say) would otherwise be echoed back whole.
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else f"{text[: MAX_SHOWN_CHARS - 3]}... ({len(text)} chars)"


def _without_union_tags(loc: tuple[int | str, ...], model: type[BaseModel] | None) -> list[int | str]:
    """`loc` less the parts that name a union member, found by walking `model`'s field types along it."""
    kept: list[int | str] = []
    node: Any = _unwrap(model)
    for part in loc:
        members = None if node is None else _union_members(node)
        if members is not None:
            # pydantic names the member it tried next in the path (its tag, or its type's name).
            node = _member_named(members, part)
            continue
        kept.append(part)
        node = None if node is None else _child(node, part)
    return kept


def _unwrap(annotation: Any) -> Any:
    """The type without Annotated[...] metadata, and `X | None` as X (pydantic puts no part for None)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _union_members(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return None


def _member_named(members: tuple[Any, ...], part: int | str) -> Any:
    """The member `part` names: by its Tag, a Literal value of one of its fields (the discriminator), or its name."""
    for member in members:
        metadata = typing.get_args(member)[1:] if typing.get_origin(member) is Annotated else ()
        if any(isinstance(item, Tag) and item.tag == part for item in metadata):
            return _unwrap(member)
    for member in map(_unwrap, members):
        if not _is_model(member):
            continue
        literals = [
            typing.get_args(field.annotation)
            for field in member.model_fields.values()
            if typing.get_origin(field.annotation) is typing.Literal
        ]
        if part == member.__name__ or any(part in values for values in literals):
            return member
    return None


def _child(annotation: Any, part: int | str) -> Any:
    """The type found at `part` inside `annotation`; None when the types do not say."""
    if _is_model(annotation):
        for name, field in annotation.model_fields.items():
            if part in (name, field.alias):
                return _unwrap(field.annotation)
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return _unwrap(args[0])
        return _unwrap(args[part]) if isinstance(part, int) and part < len(args) else None
    if isinstance(origin, type) and issubclass(origin, Mapping) and len(args) == 2:
        return _unwrap(args[1])
    if isinstance(origin, type) and issubclass(origin, Collection) and len(args) == 1:
        return _unwrap(args[0])
    return None


def _is_model(annotation: Any) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
