"""Session-wide test settings: OpenMP threads that sleep when idle, tests that must not overlap under
pytest-xdist (tests/helpers/workers.py), and the order modules run in (`make pytest` runs workers)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.helpers import workers

_HELD = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module imports torch and before xdist starts its workers (they inherit both)."""
    # torch's OpenMP threads spin while they wait for work; beside other workers and processes on the
    # same cores that spinning takes the CPU the others need (as for `make bench` and `make train-glm`).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no":
        workers.make_lock_dir()


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the last worker has ended."""
    if not hasattr(config, "workerinput"):
        workers.remove_lock_dir()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with an `alone` test first, then those with a `slow` one, then the rest, each in order.

    Under xdist (`make pytest`: `--dist load --maxschedchunk 1`) the tests are handed out one by one in
    this order: the `alone` ones run before long tests are under way on the other workers (which wait
    meanwhile), and the long ones start early instead of forming the tail of the run. A stable sort on a
    per-module key keeps each module's tests together and in order, so without xdist the run is the same
    set in another order and each module sets its module-scoped fixtures up once.
    """
    rank: dict[Path, int] = {}
    for item in items:
        kind = 0 if item.get_closest_marker("alone") else 1 if item.get_closest_marker("slow") else 2
        rank[item.path] = min(kind, rank.get(item.path, 2))
    items.sort(key=lambda item: rank[item.path])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Take the locks of the `alone` and `one_at_a_time` marks before any fixture is set up (a module's
    fixtures are set up with its first test); a lock not taken in time is an error of this test's setup."""
    held = item.stash[_HELD] = contextlib.ExitStack()
    held.enter_context(workers.held_for(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Let the locks go once every fixture this test ends is torn down."""
    try:
        return (yield)
    finally:
        held = item.stash.get(_HELD, None)
        if held is not None:
            held.close()
