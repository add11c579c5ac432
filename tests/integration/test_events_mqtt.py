"""A real agent over MQTT, read by Debian's mosquitto_sub as a Home Assistant user's broker would be.

A real cloud (oracle backend, MQTT bridge), Debian's mosquitto, and an edge agent running a clip end
to end with the watch-everything policy. mosquitto_sub, a client this project did not write, reads
the event stream, the Home Assistant discovery configs, the availability and the occupancy states;
the test checks what it printed against the agent's own events file and docs/events.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from cloud.service import CloudService
from edge.agent import EdgeAgent
from tests.helpers.agents import WATCH_ALL, cloud_config, edge_config, make_agent_clip
from tests.helpers.broker import MosquittoBroker
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.parametrize("broker", ["mqtt"], indirect=True)
EDGE = "gw-ev"
WAIT_S = 90.0
EVENT_KEYS = {
    "schema", "type", "id", "edge_id", "camera", "track_id", "label", "sub_label", "score", "top_score", "box",
    "frame_seq", "first_seen", "last_seen", "source", "verdict", "rules", "policy_version", "has_snapshot",
}  # fmt: skip
# What Home Assistant's MQTT discovery needs of a sensor to list it under a device.
DISCOVERY_KEYS = {"name", "unique_id", "state_topic", "availability", "device"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))


def mosquitto_sub() -> str:
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto_sub is missing on CI: `make test` installs mosquitto-clients")
        pytest.skip("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
    return binary


async def test_a_real_run_reads_as_documented_events_discovery_and_availability(
    tmp_path: Path, clip: Path, broker: MosquittoBroker
) -> None:
    topics = [
        f"edgeglm/{EDGE}/events",
        f"edgeglm/{EDGE}/availability",
        f"edgeglm/{EDGE}/+/+/occupancy",
        f"edgeglm/{EDGE}/+/last_event",
        "homeassistant/#",
    ]
    arguments = ["-h", broker.host, "-p", str(broker.port), "-q", "1", "-v", "-W", str(int(WAIT_S))]
    for topic in topics:
        arguments += ["-t", topic]
    reader = await asyncio.create_subprocess_exec(mosquitto_sub(), *arguments, stdout=asyncio.subprocess.PIPE)
    lines: list[tuple[str, str]] = []
    try:
        await wait_until(lambda: broker.subscribed(topics[-1]), "mosquitto_sub's subscriptions")
        service = CloudService(cloud_config(tmp_path, clip, WATCH_ALL, broker))
        await service.start()
        try:
            agent = EdgeAgent(edge_config(tmp_path, clip, service.port, EDGE, initial=WATCH_ALL, broker=broker))
            await asyncio.wait_for(agent.run(asyncio.Event()), timeout=WAIT_S)
        finally:
            await service.stop()
        assert reader.stdout is not None
        async with asyncio.timeout(WAIT_S):
            while (f"edgeglm/{EDGE}/availability", "offline") not in lines:
                raw = await reader.stdout.readline()
                assert raw, f"mosquitto_sub ended before the agent said offline; it printed {lines}"
                topic, _, payload = raw.decode().rstrip("\n").partition(" ")
                lines.append((topic, payload))
    finally:
        with contextlib.suppress(ProcessLookupError):
            reader.kill()
        await reader.wait()

    published = [json.loads(p) for t, p in lines if t == f"edgeglm/{EDGE}/events"]
    written = [json.loads(line) for line in (tmp_path / EDGE / "events.jsonl").read_text().splitlines()]
    assert published, "the run's events reach the broker"
    assert all(set(event) == EVENT_KEYS and event["schema"] == 1 for event in published)
    assert all(event in written for event in published), "the stream carries what the events file holds"
    news = [e["id"] for e in published if e["type"] == "new"]
    assert len(news) == len(set(news)), "one new per object"
    for event in published:
        if event["type"] != "new":
            assert event["id"] in news, f"{event['type']} of an object never announced: {event}"

    configs = {t: json.loads(p) for t, p in lines if t.startswith("homeassistant/") and p}
    occupancy = {t: c for t, c in configs.items() if t.startswith("homeassistant/binary_sensor/")}
    labels = {"person", "cat", "motorcycle", "cup", "rocket"}  # WATCH_ALL's watch list
    assert {c["state_topic"].split("/")[-2] for c in occupancy.values()} == labels
    for config in configs.values():
        assert set(config) >= DISCOVERY_KEYS, config
        assert config["availability"] == [{"topic": f"edgeglm/{EDGE}/availability"}]
        assert config["device"]["identifiers"] == [f"edgeglm_{EDGE}_cam0"]
    assert all(c["device_class"] == "occupancy" for c in occupancy.values())
    assert any(t.startswith("homeassistant/sensor/") and "last_event" in t for t in configs)

    availability = [p for t, p in lines if t == f"edgeglm/{EDGE}/availability"]
    assert availability[0] == "online" and availability[-1] == "offline"
    announced = {e["label"] for e in published if e["type"] == "new"}
    states: dict[str, list[str]] = {}
    for topic, payload in lines:
        if topic.endswith("/occupancy"):
            states.setdefault(topic.split("/")[-2], []).append(payload)
    for label in announced:
        assert "ON" in states[label], f"{label} was announced but its occupancy never went ON: {states}"
        assert states[label][-1] == "OFF", f"every {label} ended, yet occupancy stays {states[label][-1]}"
    last_events = [json.loads(p) for t, p in lines if t == f"edgeglm/{EDGE}/cam0/last_event"]
    assert last_events and last_events[-1] == published[-1]
