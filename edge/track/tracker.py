"""One camera's multi-object tracker: Roboflow's `trackers` ByteTrack, fed with capture times.

Why this library: ByteTrack is the tracker Frigate-class systems use on edge hardware (IoU and a
Kalman filter, no appearance model, so no second network per frame), and `trackers` (Apache-2.0,
Roboflow) is its maintained home since supervision 0.31 removed its copy. Its `update` takes the
frame's timestamp, so a track ages by capture time: frames the gate skips as unchanged do not end
tracks early, as they would with a tracker that counts frames seen. Its cost per frame is measured
next to the detector's by `bench/detector.py`.

What this module adds to the library, and why it is not in it:
- ByteTrack names a track only from its second matched frame (`tracker_id` -1 on the first). An
  object the edge is sure of must be acted on at once, so a new detection gets a provisional name
  here, which the track keeps when the tracker names it on the next frame (same label, and a box
  as close to the provisional one as the tracker's own matching asks). An object seen on one frame
  only keeps its provisional name and ends like any other.
- Names are per camera strings ("17"), unique for the life of the process.

Association uses the library's distance-IoU (DIoU) rather than plain IoU: at the 2 frames/s of a
gateway camera an object crossing the view moves further than its own width between frames, and
plain IoU breaks its track into pieces. Measured on a 120 s world clip at 2 frames/s with the edge
model (15 objects): plain IoU >= 0.1 made 81 tracks (4.6 per object, 21 matching no object);
DIoU >= -0.5 made 24 (1.2 per object, 8 matching none), and no track covered two objects.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.detect import Detection

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tracked:
    """A detection of one frame and the name of the tracked object it belongs to."""

    track_id: str
    detection: Detection


class CameraTracker:
    """Tracks one camera's detections across its frames; `update` once per detected frame, in capture order."""

    def __init__(self, *, new_track_score: float, match_diou: float, lost_after_s: float, frame_rate: float) -> None:
        """Detections scoring `new_track_score` or more start tracks; weaker ones only continue them."""
        # Imported here: supervision, which trackers uses for its detection type, is a heavy import.
        import supervision
        from trackers import ByteTrackTracker

        self._sv = supervision
        from trackers.utils.iou import DIoU

        self._similarity = DIoU()
        self._match = match_diou

        self._tracker = ByteTrackTracker(
            # The library counts its buffer in frames of a 30 fps video; it turns it into seconds.
            lost_track_buffer=max(1, round(lost_after_s * 30)),
            frame_rate=frame_rate,
            track_activation_threshold=new_track_score,
            minimum_consecutive_frames=1,
            minimum_iou_threshold=match_diou,
            iou=self._similarity,
            high_conf_det_threshold=new_track_score,
        )
        self._names: dict[int, str] = {}  # the library's track id -> our name
        self._provisional: list[tuple[str, Detection]] = []  # named last frame, not yet by the library
        self._counter = itertools.count(1)
        self._last_t: float | None = None

    def set_new_track_score(self, score: float) -> None:
        """A new policy moved the lowest band: detections from `score` up start tracks."""
        self._tracker.track_activation_threshold = score
        self._tracker.high_conf_det_threshold = score

    def update(self, detections: Sequence[Detection], captured_at: float) -> list[Tracked]:
        """The frame's detections with their track names; those that belong to no track are left out."""
        sv = self._sv
        if self._last_t is not None and captured_at <= self._last_t:
            # The library skips a frame whose time does not move forward; nudge it so none is lost.
            captured_at = self._last_t + 1e-3
        self._last_t = captured_at
        if detections:
            boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
            frame = sv.Detections(
                xyxy=boxes,
                confidence=np.array([d.score for d in detections], dtype=np.float64),
                class_id=np.array([d.class_id for d in detections], dtype=int),
                data={"index": np.arange(len(detections))},
            )
        else:
            frame = sv.Detections.empty()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = self._tracker.update(frame, timestamp=captured_at)
        provisional, self._provisional = self._provisional, []
        tracked: list[Tracked] = []
        indices = list(result.data["index"]) if len(result) else []
        library_ids = list(result.tracker_id) if len(result) and result.tracker_id is not None else []
        for index, library_id in zip(indices, library_ids, strict=True):
            detection = detections[int(index)]
            if library_id < 0:
                if detection.score < self._tracker.track_activation_threshold:
                    continue  # a weak detection no track explains: noise
                name = str(next(self._counter))
                self._provisional.append((name, detection))
            else:
                name = self._names.get(int(library_id)) or self._adopt(int(library_id), detection, provisional)
            tracked.append(Tracked(name, detection))
        self._forget_ended()
        return tracked

    def _adopt(self, library_id: int, detection: Detection, provisional: list[tuple[str, Detection]]) -> str:
        best, best_score = None, self._match
        for i, (_, earlier) in enumerate(provisional):
            score = float(self._similarity.compute(np.array([earlier.box]), np.array([detection.box]))[0, 0])
            if earlier.label == detection.label and score >= best_score:
                best, best_score = i, score
        name = provisional.pop(best)[0] if best is not None else str(next(self._counter))
        self._names[library_id] = name
        return name

    def _forget_ended(self) -> None:
        alive = {int(t.tracker_id) for t in self._tracker.tracks}
        for library_id in [i for i in self._names if i not in alive]:
            del self._names[library_id]
