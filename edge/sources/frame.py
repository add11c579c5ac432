"""What a camera source hands on: frames, and the state it is in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

SourceState = Literal["connecting", "streaming", "stalled", "reconnecting", "ended", "failed"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One image from one camera.

    `seq` is the frame's number in its stream: for a file or folder, its index in the file (so it
    lines up with a clip's ground truth, also when frames are skipped or the file loops); for a live
    camera, the number of frames read since the source started, across reconnects.
    """

    camera_id: str
    seq: int
    captured_at: float
    """Unix seconds when the frame was read (passed on, for paced files)."""
    image: NDArray[np.uint8]
    """BGR, H x W x 3, as OpenCV decodes it."""
