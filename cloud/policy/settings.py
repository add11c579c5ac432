"""The cloud's side of the policy settings: what operators write, read as overrides and merged.

The settings, their bounds and meanings, and their wire form live once in `protos/policy_settings.py`,
shared with the edge, so the cloud refuses here exactly what an edge would refuse on arrival. This
module adds what only the cloud does with them: overrides (per site, per edge) are the same models
read partially, where only the fields an operator wrote (`model_fields_set`) override the policy
underneath, and `merge` folds them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError, field_validator

from common.config import describe, yaml_path
from protos.policy_settings import (
    Band,
    GateSettings,
    MiningSettings,
    ModelRef,
    PolicySettings,
    UplinkSettings,
)

__all__ = [
    "Band",
    "GateSettings",
    "MiningSettings",
    "ModelRef",
    "PolicyOverride",
    "PolicySettings",
    "PolicyValidationError",
    "UplinkSettings",
    "describe_errors",
    "merge",
    "overrides_of",
    "parse_override",
    "parse_settings",
]


class PolicyValidationError(ValueError):
    """Policy settings outside the bounds; `problems` holds (field path, message) pairs, the message all of them."""

    def __init__(self, where: str, problems: list[tuple[str, str]]) -> None:
        """`where` names the policy (e.g. "fleet policy", "edge gw-1 override")."""
        self.where = where
        self.problems = problems
        super().__init__("; ".join(f"{where}: {path}: {message}" for path, message in problems))


def describe_errors(err: ValidationError, model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """(field path, what is wrong) for each problem of a validation error, in the one shape of common.config."""
    return [(yaml_path(problem["loc"], model) or "(top level)", describe(problem)) for problem in err.errors()]


def parse_settings(raw: PolicySettings | Mapping[str, Any] | None, where: str) -> PolicySettings:
    """Validated settings from a model or a mapping (None: all defaults); PolicyValidationError names each field."""
    if type(raw) is PolicySettings:
        return raw
    if isinstance(raw, PolicySettings):
        raw = raw.model_dump(mode="json")  # an override read whole: its unwritten fields take their defaults
    if raw is not None and not isinstance(raw, Mapping):
        raise PolicyValidationError(
            where, [("(top level)", f"expected a mapping of settings, got {type(raw).__name__}")]
        )
    try:
        return PolicySettings.model_validate(dict(raw or {}))
    except ValidationError as err:
        raise PolicyValidationError(where, describe_errors(err)) from err


def overrides_of(settings: PolicySettings) -> dict[str, Any]:
    """Only the fields an operator wrote, nested (what an override changes)."""
    return settings.model_dump(exclude_unset=True, mode="json")


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge(base: PolicySettings, *layers: PolicySettings, where: str) -> PolicySettings:
    """`base` with each layer's written fields on top, in order, validated as a whole (PolicyValidationError)."""
    raw = base.model_dump(mode="json")
    for layer in layers:
        raw = _deep_merge(raw, overrides_of(layer))
    return parse_settings(raw, where)


class PolicyOverride(PolicySettings):
    """Settings of a site or edge override: only the fields written override the policy underneath.

    A band is written whole (low and high): a lone bound would be checked against the built-in
    other bound, not the one of the policy underneath.
    """

    @field_validator("mining")
    @classmethod
    def _whole_bands(cls, mining: MiningSettings) -> MiningSettings:
        written = mining.model_dump(exclude_unset=True)
        named = [("default_band", written.get("default_band"))]
        named += [(f"bands.{label}", band) for label, band in written.get("bands", {}).items()]
        for path, band in named:
            if band is not None and set(band) != {"low", "high"}:
                raise ValueError(f"{path}: an override gives a band whole (both low and high)")
        return mining


def parse_override(raw: PolicySettings | Mapping[str, Any] | None, where: str) -> PolicyOverride:
    """A validated override from a model or a mapping; PolicyValidationError names each field."""
    if isinstance(raw, PolicyOverride):
        return raw
    if isinstance(raw, PolicySettings):
        raw = overrides_of(raw)
    if raw is not None and not isinstance(raw, Mapping):
        raise PolicyValidationError(
            where, [("(top level)", f"expected a mapping of settings, got {type(raw).__name__}")]
        )
    try:
        return PolicyOverride.model_validate(dict(raw or {}))
    except ValidationError as err:
        raise PolicyValidationError(where, describe_errors(err)) from err
