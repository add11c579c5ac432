"""A model's manifest: what an edge model file is, where it came from and how good it was, signed.

The cloud writes one per published model (``edgeglm-cloud model publish``, or ``train-edge`` when it
promotes a candidate) and signs it with the same Ed25519 key as its policies; an edge fetching the
model verifies the signature, then the file's size and SHA-256 against it, then the file's own
ONNX metadata (classes, input size) against it, before the model is ever run on a camera frame.

On disk and on the wire the signed manifest is one JSON document::

    {"manifest": {...}, "signature": "<base64>", "key_id": "<16 hex>", "algorithm": "ed25519"}

The signature covers the manifest's canonical JSON (keys sorted, no spaces, UTF-8), so the file can
be pretty-printed and still verify: signer and verifier both re-serialise the parsed object.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from common.signing import ALGORITHM, SignatureError, key_id, verify_bytes

_CHUNK = 1 << 20
MANIFEST_VERSION = 1


# How a policy names a model in the cloud's registry: edgeglm://<name>/<version>, each a plain path
# segment (the registry's folders). One rule for the cloud that serves it and the edge that asks.
MODEL_URI_SCHEME = "edgeglm://"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def model_uri(name: str, version: str) -> str:
    """The URI of a registry model, fetched over the edge's uplink."""
    return f"{MODEL_URI_SCHEME}{name}/{version}"


def parse_model_uri(uri: str) -> tuple[str, str]:
    """(name, version) of an ``edgeglm://`` URI; ValueError saying what is expected for anything else."""
    if not uri.startswith(MODEL_URI_SCHEME):
        raise ValueError(f"model uri {uri!r}: expected {MODEL_URI_SCHEME}<name>/<version>")
    parts = uri[len(MODEL_URI_SCHEME) :].split("/")
    if len(parts) != 2 or not all(MODEL_NAME.match(part) for part in parts):
        raise ValueError(f"model uri {uri!r}: expected {MODEL_URI_SCHEME}<name>/<version> of letters, digits, . _ -")
    return parts[0], parts[1]


class ManifestError(ValueError):
    """A manifest that cannot be read or does not verify; the message names the file or source."""


class ModelManifest(BaseModel):
    """Name, lineage, file identity, interface and quality of one edge detector model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = Field(MANIFEST_VERSION, description="Manifest format version.")
    name: str = Field(min_length=1, max_length=128, description="Model name, e.g. 'edge'.")
    version: str = Field(min_length=1, max_length=128, description="Model version, unique per name.")
    parent: str = Field("", max_length=128, description="Version this one was fine-tuned from ('' for none).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256 of the ONNX file.")
    size_bytes: int = Field(gt=0, description="Size of the ONNX file in bytes.")
    input_size: tuple[int, int] = Field(description="Model input (height, width) in pixels.")
    classes: list[str] = Field(min_length=1, description="Class names by class id, from the ONNX metadata.")
    metrics: dict[str, JsonValue] = Field(default_factory=dict, description="Evaluation results, free form.")
    training: dict[str, JsonValue] = Field(default_factory=dict, description="Training data summary, free form.")
    created_at: str = Field("", description="When the manifest was written (ISO 8601, UTC).")

    def canonical(self) -> bytes:
        """The bytes the signature covers."""
        return canonical_json(self.model_dump(mode="json"))


class SignedManifest(BaseModel):
    """A manifest with the cloud's signature over its canonical JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: ModelManifest
    signature: str = Field(description="Base64 Ed25519 signature of the manifest's canonical JSON.")
    key_id: str = Field(description="First 16 hex digits of sha256 of the signing public key.")
    algorithm: str = ALGORITHM

    def to_bytes(self) -> bytes:
        """The JSON document, indented for people (the signature does not depend on layout)."""
        return (json.dumps(self.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n").encode()

    def verify(self, public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey]) -> ModelManifest:
        """The manifest, once its signature by one of `public_keys` holds; else `SignatureError`."""
        what = f"model manifest {self.manifest.name} {self.manifest.version}"
        try:
            signature = base64.b64decode(self.signature, validate=True)
        except ValueError as err:
            raise SignatureError(f"{what}: signature is not base64") from err
        verify_bytes(self.manifest.canonical(), signature, self.key_id, self.algorithm, public_keys, what)
        return self.manifest


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per JSON value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_manifest(manifest: ModelManifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    """`manifest` signed with the cloud's key."""
    signature = private_key.sign(manifest.canonical())
    return SignedManifest(
        manifest=manifest,
        signature=base64.b64encode(signature).decode(),
        key_id=key_id(private_key.public_key()),
    )


def parse_manifest(data: bytes, where: str) -> SignedManifest:
    """A signed manifest from its JSON bytes; `ManifestError` naming `where` when it is not one."""
    try:
        return SignedManifest.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        place = ".".join(str(part) for part in first["loc"]) or "(document)"
        raise ManifestError(f"{where}: not a signed model manifest: {place}: {first['msg']}") from err


def read_manifest(path: Path) -> SignedManifest:
    """The signed manifest stored at `path`."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManifestError(f"{path}: model manifest cannot be read ({err.strerror})") from err
    return parse_manifest(data, str(path))


def file_digest(path: Path) -> tuple[str, int]:
    """Lower-case hex SHA-256 and size of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def describe_model(
    path: Path,
    *,
    name: str,
    version: str,
    parent: str = "",
    metrics: dict[str, JsonValue] | None = None,
    training: dict[str, JsonValue] | None = None,
    created_at: str = "",
) -> ModelManifest:
    """The manifest of an ONNX detector file: its digest, and the classes and input size the detector
    runtime reads from it (so a file the edge could not run is refused here, with the runtime's reason)."""
    from common.detect import Detector, DetectorConfig  # onnxruntime only where a model is described

    detector = Detector(DetectorConfig(model_path=path))
    names = detector.names
    if sorted(names) != list(range(len(names))):
        raise ManifestError(f"{path}: class ids {sorted(names)} are not 0..{len(names) - 1}")
    sha256, size = file_digest(path)
    return ModelManifest(
        name=name,
        version=version,
        parent=parent,
        sha256=sha256,
        size_bytes=size,
        input_size=detector.input_size,
        classes=[names[index] for index in range(len(names))],
        metrics=metrics or {},
        training=training or {},
        created_at=created_at,
    )


class ModelServeError(Exception):
    """A cloud would not serve a model of its registry; `code` is the gRPC status name it gave (e.g. NOT_FOUND).

    Raised by an uplink whose transport has no call status of its own (MQTT); gRPC raises its AioRpcError.
    """

    def __init__(self, code: str, message: str) -> None:
        """`message` is the cloud's reason."""
        super().__init__(message)
        self.code = code
