"""The store tests' PostgreSQL: `bench.postgres`'s throwaway cluster, and a skip when the server is missing.

`require_postgres()` skips the calling test when Debian's server is not installed, and fails it under
CI=true (`make test` installs it with `make postgres`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.postgres import MISSING, PostgresServer, postgres_bin, postgres_server

__all__ = ["PostgresServer", "postgres_server", "require_postgres"]


def require_postgres() -> Path:
    """The folder of the server's programs; skips, or fails under CI=true, when it is not installed."""
    found = postgres_bin()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found
