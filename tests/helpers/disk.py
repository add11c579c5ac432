"""A small real disk that fills up: a tmpfs of its own, mounted by the test (root), and a file that fills it."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TMPFS_BYTES = 4 << 20


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int = TMPFS_BYTES) -> Iterator[Path]:
    """A tmpfs of `size` bytes at `path` (root only; on CI a missing permission fails instead of skipping)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        check=False,
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs ({mounted.stderr.strip() or 'not root'})"
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Write a file in `folder` until the disk is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    # Unbuffered: a buffered file would try to flush what did not fit again when it closes, and fail there.
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(bytes(64 << 10))
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    return filler
