"""A real S3-compatible server for tests: moto's server mode as its own process on a free loopback port."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.fleet.run import free_port, stop_process, wait_port

START_S = 60.0
KEY_ID, SECRET = "test-key-id", "test-secret-key"


@dataclass(frozen=True)
class S3Server:
    """Where the server listens, and a credentials file for it."""

    endpoint_url: str
    credentials_file: Path

    def client(self) -> Any:
        """A boto3 client of the server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        )

    def new_bucket(self) -> str:
        """A new, empty bucket's name."""
        name = f"edgeglm-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every key in `bucket`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """moto_server on a free port, stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "moto.log"
    credentials = folder / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        wait_port(port, time.monotonic() + START_S, process, log)
        yield S3Server(f"http://127.0.0.1:{port}", credentials)
    finally:
        stop_process(process)
