"""write_atomic: the file holds the old bytes or the new ones, and the rename is flushed with its folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.files import write_atomic


def test_write_atomic_creates_then_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_content_and_removes_its_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.bin"
    write_atomic(path, b"old")

    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.bin"]


def test_the_mode_is_that_of_a_plain_file_unless_given(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    write_atomic(tmp_path / "public.pem", b"pub")
    write_atomic(tmp_path / "private.key", b"secret", mode=0o600)
    assert stat.S_IMODE((tmp_path / "public.pem").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "private.key").stat().st_mode) == 0o600


def test_the_file_and_then_its_folder_are_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Durability is not observable without pulling the power; what reaches the disk is what fsync was given.
    flushed: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        flushed.append("folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_atomic(tmp_path / "x", b"data")
    assert flushed == ["file", "folder"]
