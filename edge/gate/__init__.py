"""The gate stage: skip frames where nothing changed, before they cost a detector run."""

from edge.gate.frame_gate import DEFAULT_BACKGROUND_ALPHA, FrameGate, GateResult

__all__ = ["DEFAULT_BACKGROUND_ALPHA", "FrameGate", "GateResult"]
