"""Protobuf `float` fields are 32-bit: read back, a value is named by the shortest decimal of its float32.

So 0.35 written comes back as 0.35, not 0.3499999940395355: settings survive a round trip unchanged
and logs read as people wrote them. Both sides' conversions use this one rule.
"""

from __future__ import annotations

import math

import numpy as np


def f32(value: float) -> float:
    """The shortest decimal naming the same float32 as `value` (what a protobuf float field holds)."""
    if not math.isfinite(value):
        return float(value)
    return float(str(np.float32(value)))
