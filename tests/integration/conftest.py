"""Fixtures of the integration tests: a generated clip for the cloud's oracle, the transport (every
transport test runs on gRPC and on MQTT), and MQTT observers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.broker import MosquittoBroker, running_broker
from tests.helpers.cloud import make_clip
from tests.helpers.mqtt import Observer


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle's three-second clip (tests/helpers/cloud.make_clip); a module may override it."""
    return make_clip(tmp_path_factory.mktemp("clip") / "cam0")


@pytest.fixture(params=["grpc", "mqtt"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MosquittoBroker | None]:
    """None for gRPC; a running mosquitto for MQTT: every transport test runs on both.

    MQTT-only modules narrow it with `pytestmark = pytest.mark.parametrize("broker", ["mqtt"], indirect=True)`.
    """
    if request.param == "grpc":
        yield None
        return
    with running_broker(tmp_path / "broker") as started:
        yield started


@pytest.fixture
def observer_factory(broker: MosquittoBroker | None) -> Iterator[Callable[..., Observer]]:
    """Make Observers of the test broker (subscribed to the topics given); all closed at the end."""
    assert broker is not None, "an MQTT observer needs the MQTT transport"
    made: list[Observer] = []

    def make(*topics: str) -> Observer:
        made.append(Observer(broker, *topics))
        return made[-1]

    yield make
    for observer in made:
        observer.close()
