"""The cloud's model registry: published edge models, each a file and its signed manifest.

Layout, one folder per model version (names and versions are plain path segments)::

    <registry>/<name>/<version>/model.onnx
    <registry>/<name>/<version>/manifest.json     signed (common.manifest)

A version is published once and never changed: publishing a different file under a version that
exists is refused, so a sha256 an edge was told to expect stays true. Edges fetch a published model
over their authenticated uplink (the gRPC `FetchModel` call); a policy names it with the URI
``edgeglm://<name>/<version>``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.files import write_atomic
from common.manifest import (
    MODEL_NAME,
    ManifestError,
    ModelManifest,
    SignedManifest,
    file_digest,
    model_uri,
    parse_model_uri,
    read_manifest,
    sign_manifest,
)
from protos.policy_settings import ModelRef

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    """A model that cannot be published or found; the message names it and the registry."""


@dataclass(frozen=True, slots=True)
class PublishedModel:
    """One published model version: where its file is and its signed manifest."""

    path: Path
    signed: SignedManifest

    @property
    def manifest(self) -> ModelManifest:
        """The manifest inside the signature."""
        return self.signed.manifest

    @property
    def uri(self) -> str:
        """How a policy names it: ``edgeglm://<name>/<version>``."""
        return model_uri(self.manifest.name, self.manifest.version)

    def ref(self) -> ModelRef:
        """What a policy says to make an edge run this model (fetched from this registry)."""
        manifest = self.manifest
        return ModelRef(
            name=manifest.name,
            version=manifest.version,
            uri=self.uri,
            sha256=manifest.sha256,
            size_bytes=manifest.size_bytes,
        )


def parse_uri(uri: str) -> tuple[str, str]:
    """(name, version) of an ``edgeglm://`` URI; `RegistryError` for anything else."""
    try:
        return parse_model_uri(uri)
    except ValueError as err:
        raise RegistryError(str(err)) from err


async def read_pieces(path: Path, offset: int, size: int, piece: int) -> AsyncIterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of `path` from `offset` to `size`, read off the loop; one empty piece when
    `offset` is `size` (a resume that only needs the manifest)."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        await asyncio.to_thread(handle.seek, offset)
        if offset == size:
            yield offset, b""
        while offset < size:
            data = await asyncio.to_thread(handle.read, min(piece, size - offset))
            if not data:
                raise RegistryError(f"{path}: ends at {offset} bytes, its manifest says {size}")
            yield offset, data
            offset += len(data)
    finally:
        await asyncio.to_thread(handle.close)


class ModelRegistry:
    """Published models under one folder."""

    def __init__(self, root: Path) -> None:
        """Use (and create when needed) the registry folder `root`."""
        self.root = Path(root)

    def _folder(self, name: str, version: str) -> Path:
        for what, value in (("name", name), ("version", version)):
            if not MODEL_NAME.match(value):
                raise RegistryError(f"model {what} {value!r}: use letters, digits, '.', '_' and '-' (at most 128)")
        return self.root / name / version

    def publish(self, onnx: Path, manifest: ModelManifest, key: Ed25519PrivateKey) -> PublishedModel:
        """Copy `onnx` in under the manifest's name and version, with the manifest signed by `key`."""
        sha256, size = file_digest(onnx)
        if (sha256, size) != (manifest.sha256, manifest.size_bytes):
            raise RegistryError(
                f"{onnx}: is {size} bytes with sha256 {sha256[:12]}..., but the manifest says "
                f"{manifest.size_bytes} bytes, {manifest.sha256[:12]}...; describe the file being published"
            )
        folder = self._folder(manifest.name, manifest.version)
        if (folder / MANIFEST_FILE).exists():
            existing = self.get(manifest.name, manifest.version)
            if existing.manifest.sha256 != manifest.sha256:
                raise RegistryError(
                    f"{folder}: {manifest.name} {manifest.version} is published already with another file; "
                    "publish the new file under a new version"
                )
            return existing
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / MODEL_FILE
        partial = folder / f".{MODEL_FILE}.part"
        shutil.copyfile(onnx, partial)
        partial.replace(target)
        signed = sign_manifest(manifest, key)
        # The manifest last: a version is published when its manifest is there, never before its file.
        write_atomic(folder / MANIFEST_FILE, signed.to_bytes())
        return PublishedModel(target, signed)

    def get(self, name: str, version: str) -> PublishedModel:
        """The published model `name` `version`; `RegistryError` when there is none."""
        folder = self._folder(name, version)
        manifest_path = folder / MANIFEST_FILE
        if not manifest_path.is_file():
            known = ", ".join(f"{m.manifest.name} {m.manifest.version}" for m in self.list()) or "none"
            raise RegistryError(f"{self.root}: no published model {name} {version} (published: {known})")
        try:
            signed = read_manifest(manifest_path)
        except ManifestError as err:
            raise RegistryError(str(err)) from err
        return PublishedModel(folder / MODEL_FILE, signed)

    def list(self) -> list[PublishedModel]:
        """Every published model, by name then version."""
        if not self.root.is_dir():
            return []
        found = []
        for manifest_path in sorted(self.root.glob(f"*/*/{MANIFEST_FILE}")):
            try:
                found.append(PublishedModel(manifest_path.parent / MODEL_FILE, read_manifest(manifest_path)))
            except ManifestError as err:
                logger.warning("model registry: skipping %s", err)
        return found
