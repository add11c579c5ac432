"""Policies on the edge: the settings the cloud pushes, verified, applied and persisted."""

from edge.policy.settings import Band, EdgePolicy, GatePolicy, MiningPolicy, ModelRef, UplinkPolicy

__all__ = ["Band", "EdgePolicy", "GatePolicy", "MiningPolicy", "ModelRef", "UplinkPolicy"]
