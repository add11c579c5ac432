"""edge/homeassistant.py: discovery configs Home Assistant accepts, and occupancy that follows the objects."""

from __future__ import annotations

import json
from typing import Any

from edge.homeassistant import Discovery, HomeAssistantState


def event(kind: str, track: str, label: str = "person", verdict: str | None = None) -> dict[str, Any]:
    return {"schema": 1, "type": kind, "id": f"gw/cam0/{track}", "camera": "cam0", "label": label, "verdict": verdict}


def test_each_camera_gets_an_occupancy_sensor_per_watched_label_and_a_last_event_sensor() -> None:
    configs = dict(Discovery("gw-1", sw_version="0.1.0").configs(["cam0", "door/1"], ["person", "cat"]))
    assert sorted(configs) == [
        "homeassistant/binary_sensor/gw-1/edgeglm_gw-1_cam0_cat_occupancy/config",
        "homeassistant/binary_sensor/gw-1/edgeglm_gw-1_cam0_person_occupancy/config",
        "homeassistant/binary_sensor/gw-1/edgeglm_gw-1_door_1_cat_occupancy/config",
        "homeassistant/binary_sensor/gw-1/edgeglm_gw-1_door_1_person_occupancy/config",
        "homeassistant/sensor/gw-1/edgeglm_gw-1_cam0_last_event/config",
        "homeassistant/sensor/gw-1/edgeglm_gw-1_door_1_last_event/config",
    ]
    person = configs["homeassistant/binary_sensor/gw-1/edgeglm_gw-1_door_1_person_occupancy/config"]
    assert person["state_topic"] == "edgeglm/gw-1/door_1/person/occupancy"  # a "/" in a camera id is one level
    assert person["device_class"] == "occupancy"
    assert (person["payload_on"], person["payload_off"]) == ("ON", "OFF")
    assert person["availability"] == [{"topic": "edgeglm/gw-1/availability"}]
    assert person["device"]["identifiers"] == ["edgeglm_gw-1_door_1"]
    last = configs["homeassistant/sensor/gw-1/edgeglm_gw-1_cam0_last_event/config"]
    assert last["state_topic"] == last["json_attributes_topic"] == "edgeglm/gw-1/cam0/last_event"
    assert last["value_template"] == "{{ value_json.label }}"


def test_occupancy_is_on_while_an_object_is_tracked_and_off_when_the_last_one_ends() -> None:
    state = HomeAssistantState(Discovery("gw"))
    assert state.announce(["cam0"], ["person"]) is True
    assert state.announce(["cam0"], ["person"]) is False
    initial = {topic: payload for topic, payload, _ in state.discovery_messages()}
    assert initial["edgeglm/gw/cam0/person/occupancy"] == b"OFF"

    def occupancy(messages: list[tuple[str, bytes, bool]]) -> list[bytes]:
        return [payload for topic, payload, retain in messages if topic.endswith("/occupancy") and retain]

    assert occupancy(state.on_event(event("new", "1"))) == [b"ON"]
    assert occupancy(state.on_event(event("new", "2"))) == []  # already on
    assert occupancy(state.on_event(event("end", "1"))) == []  # another person is still there
    messages = state.on_event(event("end", "2"))
    assert occupancy(messages) == [b"OFF"]
    last = [json.loads(p) for t, p, _ in messages if t == "edgeglm/gw/cam0/last_event"]
    assert last == [event("end", "2")]
    # A verdict that comes after the object left updates it, and does not bring it back.
    assert occupancy(state.on_event(event("update", "2", verdict="confirmed"))) == []


def test_a_withdrawn_or_relabelled_object_leaves_its_labels_count() -> None:
    state = HomeAssistantState(Discovery("gw"))
    state.announce(["cam0"], ["person", "cat"])
    state.on_event(event("new", "1"))
    changed = state.on_event(event("update", "1", label="cat", verdict="confirmed"))
    assert sorted((t, p) for t, p, _ in changed if t.endswith("/occupancy")) == [
        ("edgeglm/gw/cam0/cat/occupancy", b"ON"),
        ("edgeglm/gw/cam0/person/occupancy", b"OFF"),
    ]
    withdrawn = state.on_event(event("update", "1", label="cat", verdict="rejected"))
    assert [(t, p) for t, p, _ in withdrawn if t.endswith("/occupancy")] == [("edgeglm/gw/cam0/cat/occupancy", b"OFF")]
