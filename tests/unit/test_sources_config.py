"""Camera config: which URLs and paths are accepted, and what the error says when one is not."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge.sources import CameraConfig, source_kind
from edge.sources.config import redact


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rtsp://192.0.2.10/stream1", "network"),
        ("rtsp://admin:secret@cam.local:554/h264", "network"),
        ("http://127.0.0.1:8080/video.mjpg", "network"),
        ("https://cam.example/stream", "network"),
        ("clips/cam0/frames", "path"),
        ("/data/clip.avi", "path"),
        (r"C:\clips\cam0.mp4", "path"),
    ],
)
def test_valid_urls_and_paths_are_accepted_with_their_kind(url, kind):
    config = CameraConfig(id="cam-0", url=url)
    assert config.url == url
    assert source_kind(url) == kind


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp:/x", "'rtsp:/x' is not a valid URL (expected rtsp://host/path)"),
        ("http:///nohost", "is not a valid URL (expected http://host/path)"),
        ("rtsp://cam:notaport/x", "has an invalid port"),
        ("ftp://cam/x", "unsupported scheme 'ftp'"),
        (" rtsp://cam/x", "leading or trailing spaces"),
    ],
)
def test_malformed_urls_are_rejected_naming_the_field_and_the_expected_form(url, expected):
    with pytest.raises(ValidationError) as info:
        CameraConfig(id="cam", url=url)
    errors = info.value.errors()
    assert errors[0]["loc"] == ("url",)
    assert expected in str(info.value)


@pytest.mark.parametrize("camera_id", ["", "front door", "cam/1"])
def test_camera_ids_outside_the_allowed_characters_are_rejected(camera_id):
    with pytest.raises(ValidationError) as info:
        CameraConfig(id=camera_id, url="frames")
    assert info.value.errors()[0]["loc"] == ("id",)


def test_defaults_match_a_five_fps_live_camera():
    config = CameraConfig(id="cam", url="rtsp://cam/x")
    assert (config.fps_cap, config.queue_size, config.loop, config.realtime) == (5.0, 4, False, True)
    assert (config.stall_timeout_s, config.backoff_initial_s, config.backoff_max_s, config.open_timeout_s) == (
        10.0,
        0.5,
        30.0,
        10.0,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("fps_cap", 0.0), ("fps_cap", 121), ("queue_size", 0), ("queue_size", 257), ("stall_timeout_s", 0)],
)
def test_out_of_bounds_values_are_rejected(field, value):
    with pytest.raises(ValidationError) as info:
        CameraConfig(id="cam", url="frames", **{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_unknown_keys_and_inverted_backoff_are_rejected():
    with pytest.raises(ValidationError, match="extra"):
        CameraConfig(id="cam", url="frames", fps=5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="backoff_initial_s"):
        CameraConfig(id="cam", url="frames", backoff_initial_s=5, backoff_max_s=1)


def test_passwords_are_redacted_from_urls_shown_to_people():
    assert redact("rtsp://admin:hunter2@cam.local:554/x") == "rtsp://admin:***@cam.local:554/x"
    assert redact("rtsp://cam.local/x") == "rtsp://cam.local/x"
