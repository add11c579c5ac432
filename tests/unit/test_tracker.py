"""edge/track/tracker.py: Roboflow's ByteTrack on capture times, with names from the first frame."""

from __future__ import annotations

from common.detect import Detection
from edge.track import CameraTracker

FPS = 10.0


def tracker(lost_after_s: float = 1.0) -> CameraTracker:
    return CameraTracker(new_track_score=0.3, match_diou=-0.5, lost_after_s=lost_after_s, frame_rate=FPS)


def at(x: float, score: float = 0.8, label: str = "cat") -> Detection:
    return Detection((x, 100.0, x + 60.0, 160.0), score, 0, label)


def test_a_moving_object_keeps_the_name_it_got_on_its_first_frame() -> None:
    t = tracker()
    names = [t.update([at(100.0 + 4 * i)], 1000.0 + i / FPS) for i in range(20)]
    assert all(len(frame) == 1 for frame in names)
    assert {frame[0].track_id for frame in names} == {names[0][0].track_id}


def test_two_objects_get_two_names_and_keep_them() -> None:
    t = tracker()
    frames = [t.update([at(50.0 + 3 * i), at(400.0 - 3 * i, label="dog")], 1000.0 + i / FPS) for i in range(10)]
    first = {d.detection.label: d.track_id for d in frames[0]}
    assert len(set(first.values())) == 2
    for frame in frames:
        assert {d.detection.label: d.track_id for d in frame} == first


def test_frames_the_gate_skipped_do_not_end_a_track_capture_time_does() -> None:
    t = tracker(lost_after_s=1.0)
    name = t.update([at(100.0)], 1000.0)[0].track_id
    t.update([at(102.0)], 1000.1)
    # 0.8 s without a detected frame (the gate passed none): the same object, the same name.
    assert t.update([at(104.0)], 1000.9)[0].track_id == name
    # 3 s later the track has ended: whatever comes there is a new object.
    assert t.update([at(104.0)], 1003.9)[0].track_id != name


def test_weak_detections_continue_a_track_but_do_not_start_one() -> None:
    t = tracker()
    name = t.update([at(100.0, score=0.8)], 1000.0)[0].track_id
    t.update([at(101.0, score=0.8)], 1000.1)
    continued = t.update([at(102.0, score=0.2)], 1000.2)
    assert [d.track_id for d in continued] == [name]
    assert t.update([at(500.0, score=0.2)], 1000.3) == []


def test_a_frame_with_the_same_capture_time_is_not_lost() -> None:
    t = tracker()
    t.update([at(100.0)], 1000.0)
    assert len(t.update([at(101.0)], 1000.0)) == 1


def test_a_fast_object_at_a_low_frame_rate_keeps_its_name_where_its_boxes_no_longer_overlap() -> None:
    # 2 frames/s, 80 px a frame for a 60 px wide object: consecutive boxes never overlap (plain IoU 0).
    t = CameraTracker(new_track_score=0.3, match_diou=-0.5, lost_after_s=3.0, frame_rate=2.0)
    names = {t.update([at(20.0 + 80 * i)], 1000.0 + i / 2)[0].track_id for i in range(7)}
    assert len(names) == 1
