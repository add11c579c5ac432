"""The edge's view of a policy: the contract's settings plus the version and scope they came with.

The settings themselves, their bounds and meanings, live once in `protos/policy_settings.py`, shared
with the cloud; the edge calls them by what they steer (`GatePolicy` for the gate, `MiningPolicy`
for the miner, `UplinkPolicy` for the uplink). A policy whose values fall outside the bounds is
refused, counted, and the previous one stays. The defaults are the built-in policy an agent runs
before the cloud has spoken (version 0).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protos.policy_settings import MAX_POLICY_VERSION, Band, ModelRef, PolicySettings
from protos.policy_settings import GateSettings as GatePolicy
from protos.policy_settings import MiningSettings as MiningPolicy
from protos.policy_settings import UplinkSettings as UplinkPolicy

__all__ = ["Band", "EdgePolicy", "GatePolicy", "MiningPolicy", "ModelRef", "UplinkPolicy"]


class EdgePolicy(PolicySettings):
    """One whole policy as the edge applies it."""

    version: int = Field(0, ge=0, le=MAX_POLICY_VERSION, description="Monotonic version; 0 is the built-in default.")
    scope: Literal["builtin", "fleet", "site", "edge"] = Field("builtin", description="Who the policy is for.")
    scope_id: str = Field("", description="Site or edge id for site/edge scopes.")
    not_after: float | None = Field(
        None, description="Unix seconds after which this policy is refused on arrival; None: no expiry."
    )

    @property
    def lowest_band(self) -> float:
        """The lowest band low: detections from there up are objects (below, noise to every rule)."""
        return min([self.mining.default_band.low, *(band.low for band in self.mining.bands.values())])
