"""Home Assistant MQTT discovery: each camera announces its sensors, so a Home Assistant user sees them with no YAML.

Per camera, under the discovery prefix (retained, republished on every connection and whenever the
watch list changes):

- a `binary_sensor` per watched label, device class `occupancy`: ON while at least one object of
  that label is tracked on the camera (a `new` event and no `end` yet, and not withdrawn by the
  cloud), state on `{prefix}/{edge}/{camera}/{label}/occupancy`;
- a `sensor` "last event": the label of the camera's latest event, with the whole event (docs/events.md)
  as its attributes, on `{prefix}/{edge}/{camera}/last_event`.

Availability is `{prefix}/{edge}/availability` ("online" / "offline", retained): the edge says online
on every connection and offline when it stops; when it dies instead, its MQTT last will (the
offline status on `{prefix}/{edge}/status`, which the cloud reads) is turned into "offline" there by
the cloud's bridge, so the sensors follow the edge's status topic either way.

The discovery schema is Home Assistant's (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery):
`unique_id`, `state_topic`, `availability`, and a `device` with `identifiers`, so the sensors of one
camera group under one device.
"""

from __future__ import annotations

import json
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from common.topics import OFFLINE, ONLINE, availability_topic, topic_level

ENDED_KEPT = 4096  # ended objects remembered per edge
# (topic, payload, retain)
Publish = Callable[[str, bytes, bool], None]


def object_id(*parts: str) -> str:
    """A discovery object id: Home Assistant allows letters, digits, `_` and `-` there."""
    text = "_".join(parts)
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in text)


@dataclass(frozen=True)
class Discovery:
    """What one edge announces: its id, topic prefix, Home Assistant's discovery prefix and version."""

    edge_id: str
    prefix: str = "edgeglm"
    discovery_prefix: str = "homeassistant"
    sw_version: str = ""

    def config_topic(self, component: str, uid: str) -> str:
        """Where a sensor's discovery config goes: `<discovery prefix>/<component>/<edge>/<object id>/config`.

        The edge id is Home Assistant's optional node_id level, so a broker ACL can let each edge write
        only its own configs (`pattern write homeassistant/+/%u/+/config`).
        """
        return f"{self.discovery_prefix}/{component}/{object_id(self.edge_id)}/{uid}/config"

    def camera_topic(self, camera: str) -> str:
        """The topics of one camera begin here."""
        return f"{self.prefix}/{topic_level(self.edge_id)}/{topic_level(camera)}"

    def occupancy_topic(self, camera: str, label: str) -> str:
        """ON / OFF: whether an object of `label` is in view of `camera`."""
        return f"{self.camera_topic(camera)}/{topic_level(label)}/occupancy"

    def last_event_topic(self, camera: str) -> str:
        """The camera's latest event, as JSON."""
        return f"{self.camera_topic(camera)}/last_event"

    def configs(self, cameras: Iterable[str], watched: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
        """(config topic, config) of every sensor of every camera."""
        labels = sorted(set(watched))
        out: list[tuple[str, dict[str, Any]]] = []
        for camera in sorted(set(cameras)):
            device = {
                "identifiers": [object_id("edgeglm", self.edge_id, camera)],
                "name": f"{self.edge_id} {camera}",
                "manufacturer": "EdgeGLM",
                "model": "edge agent camera",
                "sw_version": self.sw_version,
            }
            common = {
                "availability": [{"topic": availability_topic(self.prefix, self.edge_id)}],
                "payload_available": ONLINE.decode(),
                "payload_not_available": OFFLINE.decode(),
                "device": device,
            }
            for label in labels:
                uid = object_id("edgeglm", self.edge_id, camera, label, "occupancy")
                config = {
                    "name": f"{label} occupancy",
                    "unique_id": uid,
                    "object_id": uid,
                    "state_topic": self.occupancy_topic(camera, label),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "occupancy",
                    **common,
                }
                out.append((self.config_topic("binary_sensor", uid), config))
            uid = object_id("edgeglm", self.edge_id, camera, "last_event")
            config = {
                "name": "last event",
                "unique_id": uid,
                "object_id": uid,
                "state_topic": self.last_event_topic(camera),
                "value_template": "{{ value_json.label }}",
                "json_attributes_topic": self.last_event_topic(camera),
                "icon": "mdi:cctv",
                **common,
            }
            out.append((self.config_topic("sensor", uid), config))
        return out


class HomeAssistantState:
    """Occupancy per camera and label from the event stream, and the messages that keep HA current."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self._cameras: set[str] = set()
        self._watched: tuple[str, ...] = ()
        self._live: dict[tuple[str, str], set[str]] = defaultdict(set)  # (camera, label) -> event ids
        self._ended: OrderedDict[str, None] = OrderedDict()  # objects gone: a late update does not bring them back

    def announce(self, cameras: Iterable[str], watched: Iterable[str]) -> bool:
        """The cameras and the watch list; True when they changed (the discovery is to be sent again)."""
        cameras_now, watched_now = set(cameras), tuple(sorted(set(watched)))
        changed = cameras_now != self._cameras or watched_now != self._watched
        self._cameras, self._watched = cameras_now, watched_now
        return changed

    def discovery_messages(self) -> list[tuple[str, bytes, bool]]:
        """Every config (retained) and every occupancy state as it is now (retained)."""
        messages = [
            (topic, json.dumps(config, separators=(",", ":")).encode(), True)
            for topic, config in self.discovery.configs(self._cameras, self._watched)
        ]
        for camera in sorted(self._cameras):
            for label in self._watched:
                messages.append(self._occupancy(camera, label))
        return messages

    def on_event(self, event: dict[str, Any]) -> list[tuple[str, bytes, bool]]:
        """The messages one event makes: the camera's last event, and occupancy where it changed."""
        camera, label, event_id = str(event["camera"]), str(event["label"]), str(event["id"])
        before = {key: bool(ids) for key, ids in self._live.items() if key[0] == camera}
        for ids in (ids for key, ids in self._live.items() if key[0] == camera):
            ids.discard(event_id)  # a relabelled object moves from its old label's count
        if event["type"] == "end":
            self._ended[event_id] = None
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)
        elif event.get("verdict") != "rejected" and event_id not in self._ended:
            self._live[(camera, label)].add(event_id)
        messages = [(self.discovery.last_event_topic(camera), json.dumps(event, separators=(",", ":")).encode(), True)]
        for key in sorted({*before, (camera, label)}):
            if key[1] in self._watched and bool(self._live.get(key)) != before.get(key, False):
                messages.append(self._occupancy(*key))
        return messages

    def _occupancy(self, camera: str, label: str) -> tuple[str, bytes, bool]:
        state = b"ON" if self._live.get((camera, label)) else b"OFF"
        return self.discovery.occupancy_topic(camera, label), state, True
