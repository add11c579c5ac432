"""Where the field dataset's images live: a folder (the default) or an S3-compatible bucket.

Both are blocking and called from the dataset's worker threads. An image's name is its record's
(`images/<2 hex>/<32 hex>.jpg`); the folder writes it atomically (a crash leaves the old file or
the new one), the bucket with one PUT (S3 writes are atomic per object). With S3 and a PostgreSQL
store, every replica keeps records in one shared dataset; MinIO, Ceph and any service speaking the
S3 API work through `endpoint_url`. boto3 is used for S3 (the `s3` extra): its retries, timeouts
and credential chain (environment, a shared credentials file, a pod's role) are what an operator
expects.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any, Protocol

from cloud.dataset.config import FolderConfig, S3Config
from common.files import write_atomic


class ImageStoreError(OSError):
    """An image could not be written, read or removed; the message names the store and the image."""


class ImageStore(Protocol):
    """Blocking put, get and delete of images by name."""

    where: str
    sweeps: bool  # whether `sweep` does anything (a folder; listing a bucket at every start is not cheap)

    def put(self, name: str, data: bytes) -> None:
        """Store `data` as `name`, replacing any."""

    def get(self, name: str) -> bytes:
        """The bytes of `name`; ImageStoreError when it is not there."""

    def delete(self, names: list[str]) -> None:
        """Remove `names` (those missing are no error)."""

    def sweep(self, named: set[str]) -> int:
        """Remove images no name in `named` is; how many went (0 where listing is not cheap)."""


class FolderImages:
    """Images under a folder."""

    def __init__(self, root: Path) -> None:
        """Keep images under `root` (created on first write)."""
        self.root = root
        self.where = str(root)
        self.sweeps = True

    def put(self, name: str, data: bytes) -> None:
        """Write atomically beside the target, then rename."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)

    def get(self, name: str) -> bytes:
        """Read one image."""
        try:
            return (self.root / name).read_bytes()
        except OSError as err:
            raise ImageStoreError(f"{self.root / name}: {err.strerror or err}") from err

    def delete(self, names: list[str]) -> None:
        """Unlink each."""
        for name in names:
            (self.root / name).unlink(missing_ok=True)

    def sweep(self, named: set[str]) -> int:
        """Remove image files and leftover temporary files no record names (a crash between file and row)."""
        images = self.root / "images"
        if not images.is_dir():
            return 0
        gone = 0
        for path in [*images.glob("*/*.jpg"), *images.glob("*/.*.tmp")]:
            if path.relative_to(self.root).as_posix() not in named:
                path.unlink(missing_ok=True)
                gone += 1
        return gone


class S3Images:
    """Images in an S3-compatible bucket, under a prefix."""

    def __init__(self, config: S3Config) -> None:
        """A client for `config` (nothing is contacted until the first call)."""
        import boto3
        from botocore.config import Config

        credentials: dict[str, str] = {}
        if config.credentials_file is not None:
            credentials = read_credentials(config.credentials_file)
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30),
            **credentials,
        )
        self._bucket = config.bucket
        self._prefix = config.prefix
        self.sweeps = False
        at = f" at {config.endpoint_url}" if config.endpoint_url else ""
        self.where = f"s3://{config.bucket}/{config.prefix}{at}"

    def put(self, name: str, data: bytes) -> None:
        """One PUT."""
        self._call("put", name, Bucket=self._bucket, Key=self._prefix + name, Body=data, ContentType="image/jpeg")

    def get(self, name: str) -> bytes:
        """One GET."""
        answer = self._call("get", name, Bucket=self._bucket, Key=self._prefix + name)
        body: bytes = answer["Body"].read()
        return body

    def delete(self, names: list[str]) -> None:
        """DELETE in batches of 1,000 (the API's limit)."""
        for first in range(0, len(names), 1000):
            objects = [{"Key": self._prefix + name} for name in names[first : first + 1000]]
            self._call("delete", names[first], Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True})

    def sweep(self, named: set[str]) -> int:
        """Nothing: listing a large bucket at every start costs more than the few orphans a crash leaves."""
        return 0

    def _call(self, what: str, name: str, **arguments: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        method = {"put": "put_object", "get": "get_object", "delete": "delete_objects"}[what]
        try:
            return getattr(self._client, method)(**arguments)
        except (BotoCoreError, ClientError) as err:
            raise ImageStoreError(f"{self.where}: {what} {name} failed: {err}") from err


def read_credentials(path: Path) -> dict[str, str]:
    """aws_access_key_id and aws_secret_access_key of the [default] profile in an AWS-style credentials file."""
    parser = configparser.ConfigParser()
    try:
        found = parser.read(path)
    except configparser.Error as err:
        raise ImageStoreError(f"{path}: not an AWS credentials file ({err})") from err
    if not found:
        raise ImageStoreError(f"{path}: cannot be read")
    section = parser["default"] if parser.has_section("default") else None
    keys = ("aws_access_key_id", "aws_secret_access_key")
    if section is None or not all(section.get(key) for key in keys):
        raise ImageStoreError(f"{path}: its [default] needs aws_access_key_id and aws_secret_access_key")
    return {key: str(section[key]) for key in keys}


def image_store(storage: FolderConfig | S3Config, root: Path) -> ImageStore:
    """The store `storage` describes; a folder's images go under `root`."""
    return S3Images(storage) if isinstance(storage, S3Config) else FolderImages(root)
