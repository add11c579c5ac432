"""Fixtures of the integration tests: a generated clip for the cloud's oracle, the transport (every
transport test runs on gRPC and on MQTT), MQTT observers, the store's engine (every store test
runs on SQLite and on PostgreSQL), and an S3-compatible server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.store.db import Database
from cloud.store.pg import PgPool
from tests.helpers.broker import MosquittoBroker, running_broker
from tests.helpers.cloud import make_clip
from tests.helpers.mqtt import Observer
from tests.helpers.postgres import PostgresServer, postgres_server, require_postgres
from tests.helpers.s3 import S3Server, s3_server


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster per test process (tests/helpers/postgres.py), started when first asked for."""
    require_postgres()
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3-compatible server (moto's, a real process) per test process; each test makes its own bucket."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Database | None]]:
    """Every store test runs on both engines: this makes the Database of one store (None: SQLite at the
    test's own path, as `VerdictStore(path)` opens it), each store of a test on one fresh database."""
    if request.param == "sqlite":
        yield lambda what: None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    dsn = server.new_dsn()
    yield lambda what: PgPool(dsn, what, max_size=2)
