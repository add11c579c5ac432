"""A throwaway PostgreSQL cluster for the store's tests and benchmarks: Debian's server, on a free loopback port.

`PostgresServer` runs `initdb` into a temporary folder and `pg_ctl start` on a free port (trust
authentication on 127.0.0.1 only, fsync off unless `settings` say otherwise), hands out a
new empty database per test (`new_dsn`), and is stopped and removed after. PostgreSQL refuses to
run as root, so as root the server runs as Debian's `postgres` user (`runuser`). `postgres_bin()`
finds the server's programs (None: not installed; `make postgres` installs it). The tests wrap this
in tests/helpers/postgres.py (a missing server skips them, or fails them under CI=true).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sim.fleet.run import free_port

START_TIMEOUT_S = 60


MISSING = "PostgreSQL is not installed: run `make postgres` (apt-get install postgresql)"


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL programs (initdb, pg_ctl), newest version; None when not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PostgresServer:
    """One cluster in `folder`, serving 127.0.0.1:`port` until `stop`."""

    def __init__(self, folder: Path, settings: dict[str, str] | None = None) -> None:
        """Nothing runs before `start`; `settings` are extra server settings (name -> value)."""
        found = postgres_bin()
        if found is None:
            raise RuntimeError(MISSING)
        self.bin = found
        self.settings = {"fsync": "off", "max_connections": "200", **(settings or {})}
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.user = "edgeglm"
        self._as: list[str] = []
        if os.geteuid() == 0:  # the server refuses root; Debian's package made this user
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(folder, "postgres", "postgres")

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [*self._as, *command], capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            log = self.folder / "server.log"
            logged = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}{logged}")

    def start(self) -> None:
        """initdb and start the server; returns once it accepts connections."""
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        extra = " ".join(f"-c {name}={value}" for name, value in self.settings.items())
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 {extra}"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        )

    def dsn(self, database: str = "postgres") -> str:
        """The connection string of `database` on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_dsn(self) -> str:
        """A new, empty database's connection string."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away)."""
        with contextlib.suppress(RuntimeError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def postgres_server(settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """A started server in a new folder under the system's temporary one (the `postgres` user must reach
    it, which pytest's private tmp_path does not allow), stopped and removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="edgeglm-pg-"))
    try:
        server = PostgresServer(folder, settings)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
