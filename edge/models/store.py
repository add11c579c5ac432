"""The edge's model folder: fetched files, which one runs, which ran before, which were refused.

``models.json`` in the folder says it, replaced whole on every change (common.files.write_atomic)::

    {"current": {...}, "previous": {...}, "refused": {"<version>": {"sha256": ..., "reason": ...}}}

A file is named for its name, version and the first 12 hex digits of its hash, so two policies that
reuse a version for another file never share one. Only the current and the previous model's files
are kept (the previous one is the rollback); partial downloads live beside them as ``.part`` files
until they are complete and verified.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.files import write_atomic
from common.manifest import file_digest
from protos.policy_settings import ModelRef

logger = logging.getLogger(__name__)
STATE_FILE = "models.json"


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """A verified model file in the folder."""

    name: str
    version: str
    sha256: str
    size_bytes: int
    file: str  # the file's name inside the folder

    def matches(self, ref: ModelRef) -> bool:
        """Whether this is the file `ref` names."""
        return (self.name, self.version, self.sha256, self.size_bytes) == (
            ref.name,
            ref.version,
            ref.sha256,
            ref.size_bytes,
        )


def stem(ref: ModelRef) -> str:
    """The file name (without suffix) for `ref`'s model."""
    return f"{ref.name}-{ref.version}-{ref.sha256[:12]}"


class ModelStore:
    """Fetched models under one folder and the state saying which one runs."""

    def __init__(self, root: Path) -> None:
        """Use `root` (created when missing); reads the saved state."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._path = self.root / STATE_FILE
        self._current: InstalledModel | None = None
        self._previous: InstalledModel | None = None
        self._refused: dict[str, dict[str, str]] = {}
        self._read()

    @property
    def current(self) -> InstalledModel | None:
        """The fetched model that runs (None: the configured one runs)."""
        return self._current

    @property
    def previous(self) -> InstalledModel | None:
        """The model that ran before the current one, kept for a rollback."""
        return self._previous

    def path(self, model: InstalledModel) -> Path:
        """Where `model`'s file is."""
        return self.root / model.file

    def part_path(self, ref: ModelRef) -> Path:
        """Where a download of `ref` is written until it is complete."""
        return self.root / f"{stem(ref)}.onnx.part"

    def manifest_path(self, ref: ModelRef) -> Path:
        """Where `ref`'s signed manifest is kept beside its file."""
        return self.root / f"{stem(ref)}.manifest.json"

    def find(self, ref: ModelRef) -> InstalledModel | None:
        """The current or previous model when it is `ref`'s file and still intact on disk."""
        for model in (self._current, self._previous):
            if model is not None and model.matches(ref) and self.intact(model):
                return model
        return None

    def intact(self, model: InstalledModel) -> bool:
        """Whether `model`'s file is there with its size and hash (a disk can lose or garble it)."""
        path = self.path(model)
        try:
            return path.stat().st_size == model.size_bytes and file_digest(path)[0] == model.sha256
        except OSError:
            return False

    def refusal(self, ref: ModelRef) -> str | None:
        """Why `ref`'s file was refused before (None: it was not)."""
        entry = self._refused.get(ref.version)
        return entry["reason"] if entry is not None and entry["sha256"] == ref.sha256 else None

    def refuse(self, ref: ModelRef, reason: str) -> None:
        """Remember that `ref`'s file is refused, so that it is not fetched again for the same policy."""
        self._refused[ref.version] = {"sha256": ref.sha256, "reason": reason}
        self._save()

    def discard(self, ref: ModelRef) -> None:
        """Remove what is on disk of `ref` (a refused file): its part, its file and manifest unless they run
        or are kept for a rollback."""
        self.part_path(ref).unlink(missing_ok=True)
        kept = {m.file for m in (self._current, self._previous) if m is not None}
        if f"{stem(ref)}.onnx" not in kept:
            (self.root / f"{stem(ref)}.onnx").unlink(missing_ok=True)
            self.manifest_path(ref).unlink(missing_ok=True)

    def adopt(self, ref: ModelRef, part: Path) -> InstalledModel:
        """Move a complete, verified download into place as `ref`'s file (not yet the current one)."""
        target = self.root / f"{stem(ref)}.onnx"
        part.replace(target)
        return InstalledModel(ref.name, ref.version, ref.sha256, ref.size_bytes, target.name)

    def install(self, model: InstalledModel) -> None:
        """Make `model` the current one; the current one becomes the previous; older files are removed."""
        if self._current is not None and self._current != model:
            self._previous = self._current
        self._current = model
        self._save()
        keep = {m.file for m in (self._current, self._previous) if m is not None}
        keep |= {Path(name).with_suffix(".manifest.json").name for name in keep}
        for path in self.root.iterdir():
            if path.name != STATE_FILE and path.name not in keep and not path.name.endswith(".part"):
                path.unlink(missing_ok=True)

    def revert(self) -> None:
        """The configured model runs again; the current fetched one becomes the previous (a rollback to it
        needs no download)."""
        if self._current is not None:
            self._previous = self._current
            self._current = None
            self._save()

    def forget_current(self) -> None:
        """Run the configured model again (the current fetched one could not be loaded)."""
        self._current = None
        self._save()

    def _read(self) -> None:
        try:
            state = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            logger.error("%s: unreadable (%s); starting on the configured model", self._path, err)
            return
        self._current = _model(state.get("current"))
        self._previous = _model(state.get("previous"))
        refused = state.get("refused")
        self._refused = refused if isinstance(refused, dict) else {}

    def _save(self) -> None:
        state = {
            "current": asdict(self._current) if self._current else None,
            "previous": asdict(self._previous) if self._previous else None,
            "refused": self._refused,
        }
        write_atomic(self._path, (json.dumps(state, indent=1) + "\n").encode())


def _model(value: Any) -> InstalledModel | None:
    if not isinstance(value, dict):
        return None
    try:
        return InstalledModel(**value)
    except TypeError:
        return None
