"""Frame differencing on a downscaled grey frame, the way Frigate's motion detector and Reducto do.

Each frame is turned grey, shrunk to the policy's `downscale_width` (aspect kept), lightly blurred
and compared with a running-average background. Pixels that differ by more than
`pixel_diff_threshold` grey levels count as changed; the frame counts as changed when their share
reaches `changed_area_fraction`. The background follows the scene with a small weight per frame, so
slow light drift (clouds, auto-exposure) and an object that came to rest stop counting as change,
while anything that moves between frames still does.

One `FrameGate` per camera. `check` is meant to run in an executor thread; `update_policy` may be
called from the event loop meanwhile and takes effect at the next frame.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from edge.policy.settings import GatePolicy

DEFAULT_BACKGROUND_ALPHA = 0.05
"""Weight of each new frame in the background: at 5 fps, a scene change settles in about 4 s."""

# A 3x3 blur is enough: the area-averaging resize already cancels most per-pixel sensor noise, and
# a wider kernel would smear away the few pixels a small, distant object covers at 160 px wide.
_BLUR_KERNEL = (3, 3)


GLOBAL_CHANGE_AREA = 0.6
"""A changed region this share of the frame or more is the scene changing, not something moving."""

# Changed pixels are opened with this kernel before their bounding box is taken, so that isolated
# noise pixels do not stretch the box over the whole frame.
_OPEN_KERNEL = np.ones((2, 2), np.uint8)


@dataclass(frozen=True, slots=True)
class GateResult:
    """Whether a frame is worth detecting on, the share of its pixels that changed (0..1), and where.

    `changed_box` is the bounding box (x1, y1, x2, y2, original-frame pixels, x2/y2 exclusive) of the
    changed pixels that survive a small morphological opening; None when nothing did (or on a first
    frame). A motion-without-detection sample can carry just that region instead of the whole frame.
    """

    changed: bool
    changed_fraction: float
    changed_box: tuple[int, int, int, int] | None = None
    background_ready: bool = True
    """False on a camera's first frame (or after a reset): it is "changed" only because there is
    nothing to compare it with, so it is worth detecting on but is not motion."""
    motion: bool = False
    """Something moved: a change with a `changed_box` covering less than GLOBAL_CHANGE_AREA of the
    frame. A first frame is not motion, nor is a change over most of the frame (light, exposure, a
    bump of the camera): that is the scene changing, not an object."""


class FrameGate:
    """Decides per frame of one camera whether anything changed since the recent past."""

    def __init__(self, policy: GatePolicy, background_alpha: float = DEFAULT_BACKGROUND_ALPHA) -> None:
        if not 0.0 < background_alpha <= 1.0:
            raise ValueError(f"FrameGate: background_alpha {background_alpha} must be in (0, 1]")
        self._policy = policy
        self._pending: GatePolicy | None = None
        self._pending_lock = threading.Lock()
        self._alpha = background_alpha
        self._background: NDArray[np.float32] | None = None
        self._frame_hw: tuple[int, int] | None = None

    @property
    def policy(self) -> GatePolicy:
        """The policy in force (a pending update shows only after the next frame)."""
        return self._policy

    def update_policy(self, policy: GatePolicy) -> None:
        """Use `policy` from the next frame on; a new downscale width restarts the background."""
        # The loop thread hands the policy over while `check` may be running in an executor thread;
        # `check` takes it at its start, so a frame is judged under one policy from start to end.
        with self._pending_lock:
            self._pending = policy

    def reset(self) -> None:
        """Forget the background: the next frame counts as changed."""
        self._background = None
        self._frame_hw = None

    def check(self, frame: NDArray[np.uint8]) -> GateResult:
        """Compare `frame` (BGR, BGRA or grey) with the background, then fold it into the background."""
        self._apply_pending()
        policy = self._policy
        frame_hw = (int(frame.shape[0]), int(frame.shape[1]))
        if frame_hw != self._frame_hw:
            # First frame, or the camera changed resolution: the old background means nothing now.
            self._background = None
            self._frame_hw = frame_hw
        small = _prepare(frame, policy.downscale_width)
        if self._background is None:
            self._background = small
            return GateResult(changed=True, changed_fraction=1.0, background_ready=False)
        difference = cv2.absdiff(small, self._background)
        mask = (difference > policy.pixel_diff_threshold).astype(np.uint8)
        changed_pixels = int(np.count_nonzero(mask))
        fraction = changed_pixels / difference.size
        cv2.accumulateWeighted(small, self._background, self._alpha)
        changed = fraction >= policy.changed_area_fraction
        box = _changed_box(mask, frame_hw) if changed and changed_pixels else None
        motion = (
            box is not None and (box[2] - box[0]) * (box[3] - box[1]) < GLOBAL_CHANGE_AREA * frame_hw[0] * frame_hw[1]
        )
        return GateResult(changed=changed, changed_fraction=fraction, changed_box=box, motion=motion)

    def _apply_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.downscale_width != self._policy.downscale_width:
            self.reset()
        self._policy = pending


def _prepare(frame: NDArray[np.uint8], downscale_width: int) -> NDArray[np.float32]:
    """Grey, shrunk to `downscale_width` (never enlarged), lightly blurred, as float32."""
    grey = _to_grey(frame)
    height, width = grey.shape
    target_width = min(downscale_width, width)
    target_height = max(1, round(height * target_width / width))
    if (target_width, target_height) != (width, height):
        # INTER_AREA averages each block of source pixels: the right filter for shrinking, and itself
        # a strong noise reducer.
        grey = np.asarray(cv2.resize(grey, (target_width, target_height), interpolation=cv2.INTER_AREA), np.uint8)
    blurred = cv2.GaussianBlur(grey, _BLUR_KERNEL, 0)
    return np.asarray(blurred, dtype=np.float32)


def _changed_box(mask: NDArray[np.uint8], frame_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Bounding box of the opened change mask, scaled to original-frame pixels (None: only noise changed)."""
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _OPEN_KERNEL)
    if not opened.any():
        return None
    x, y, w, h = cv2.boundingRect(opened)
    scale_x, scale_y = frame_hw[1] / mask.shape[1], frame_hw[0] / mask.shape[0]
    return (
        int(x * scale_x),
        int(y * scale_y),
        min(frame_hw[1], int(np.ceil((x + w) * scale_x))),
        min(frame_hw[0], int(np.ceil((y + h) * scale_y))),
    )


def _to_grey(frame: NDArray[np.uint8]) -> NDArray[np.uint8]:
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] == 3:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), np.uint8)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY), np.uint8)
    raise ValueError(
        f"FrameGate: frame of shape {tuple(frame.shape)} is not an image (expected HxW grey, HxWx3 BGR or HxWx4 BGRA)"
    )
