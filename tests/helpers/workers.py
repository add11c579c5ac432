"""Tests that must not overlap when pytest-xdist runs them side by side (`make pytest` starts workers).

Two marks, honoured from the start of a test's setup to the end of its teardown (tests/conftest.py),
with locks in a folder that the main pytest process makes for the run and names in LOCK_DIR_ENV:

- `alone`: no other test runs meanwhile, on any worker. Every test holds the run's read-write lock,
  shared; an `alone` test holds it exclusively, and once it waits no other test starts.
- `one_at_a_time(name)`: no other test marked with that name runs meanwhile.

Without xdist there is one process and nothing to lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock, ReadWriteLock

LOCK_DIR_ENV = "EDGEGLM_TEST_LOCK_DIR"
# Less than pytest-timeout's 300 s, which counts the wait: a holder that never lets go fails the waiter
# here, naming the lock.
WAIT_S = 240.0


def make_lock_dir() -> None:
    """In the main process, before the workers start (they inherit the environment)."""
    os.environ[LOCK_DIR_ENV] = tempfile.mkdtemp(prefix="edgeglm-test-locks-")


def remove_lock_dir() -> None:
    """In the main process, once every worker has ended."""
    folder = os.environ.pop(LOCK_DIR_ENV, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def held_for(item: pytest.Item) -> Iterator[None]:
    """The locks `item`'s marks ask for, held for the block; nothing outside an xdist worker."""
    folder = os.environ.get(LOCK_DIR_ENV)
    if folder is None or "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    run = ReadWriteLock(Path(folder) / "run.db", timeout=WAIT_S)
    alone = item.get_closest_marker("alone") is not None
    with contextlib.ExitStack() as held:
        # The run lock first: a test holding a named lock never waits behind an `alone` test for the run.
        held.enter_context(run.write_lock() if alone else run.read_lock())
        named = item.get_closest_marker("one_at_a_time")
        if named is not None:
            held.enter_context(FileLock(Path(folder) / f"{named.args[0]}.lock", timeout=WAIT_S))
        yield
