"""Signed model manifests, the cloud's registry and the edge's model folder, on real files."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.models.registry import ModelRegistry, RegistryError, parse_uri, read_pieces
from common.detect import Detector, DetectorConfig
from common.manifest import ManifestError, ModelManifest, describe_model, file_digest, parse_manifest, sign_manifest
from common.signing import SignatureError
from edge.config import MqttUplinkConfig
from edge.metrics import EdgeMetrics
from edge.models.fetch import FetchError, ModelRefusedError, fetch
from edge.models.store import ModelStore
from edge.models.verify import check_file, check_manifest
from edge.uplink.mqtt import MqttUplink
from protos.policy_settings import ModelRef
from tests.helpers.agents import MODEL
from tests.helpers.mqtt import quiet_handlers

KEY = Ed25519PrivateKey.generate()
NO_CHUNKS = functools.partial(MqttUplink.model_chunks, None)  # type: ignore[arg-type]  # not used by file://


def manifest_of(path: Path, version: str = "2") -> ModelManifest:
    return describe_model(path, name="yolo-edge", version=version, parent="1")


def ref_of(manifest: ModelManifest, **changes: object) -> ModelRef:
    fields = {
        "name": manifest.name,
        "version": manifest.version,
        "uri": f"edgeglm://{manifest.name}/{manifest.version}",
        "sha256": manifest.sha256,
        "size_bytes": manifest.size_bytes,
    }
    return ModelRef.model_validate({**fields, **changes})


def test_a_manifest_describes_the_file_and_verifies_only_under_its_key() -> None:
    manifest = manifest_of(MODEL)
    assert manifest.size_bytes == MODEL.stat().st_size
    assert manifest.input_size == Detector(DetectorConfig(model_path=MODEL)).input_size
    assert "person" in manifest.classes
    signed = sign_manifest(manifest, KEY)
    # Pretty-printed on disk, it still verifies: the signature is over the canonical form.
    pretty = json.dumps(json.loads(signed.to_bytes()), indent=2).encode()
    assert parse_manifest(pretty, "pretty.json").verify(KEY.public_key()) == manifest
    with pytest.raises(SignatureError, match="unknown key id"):
        signed.verify(Ed25519PrivateKey.generate().public_key())
    tampered = json.loads(signed.to_bytes())
    tampered["manifest"]["classes"] = [*tampered["manifest"]["classes"], "rocket"]
    with pytest.raises(SignatureError):
        parse_manifest(json.dumps(tampered).encode(), "tampered.json").verify(KEY.public_key())


@pytest.mark.parametrize("data", [b"", b"not json", b'{"manifest": {}}', b"[1, 2]"])
def test_an_unreadable_manifest_is_refused_naming_where_it_came_from(data: bytes) -> None:
    with pytest.raises(ManifestError, match="from-the-cloud"):
        parse_manifest(data, "from-the-cloud")


def test_the_registry_publishes_once_per_version_and_serves_pieces_from_an_offset(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    published = registry.publish(MODEL, manifest_of(MODEL), KEY)
    assert published.uri == "edgeglm://yolo-edge/2"
    assert parse_uri(published.uri) == ("yolo-edge", "2")
    assert registry.get("yolo-edge", "2").manifest == published.manifest
    assert [m.manifest.version for m in registry.list()] == ["2"]
    assert published.ref().sha256 == published.manifest.sha256
    # The same file again is a no-op; another file under the same version is refused.
    assert registry.publish(MODEL, manifest_of(MODEL), KEY).manifest == published.manifest
    other = tmp_path / "other.onnx"
    other.write_bytes(MODEL.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="describe the file"):
        registry.publish(other, manifest_of(MODEL), KEY)
    sha256, size = file_digest(other)
    with pytest.raises(RegistryError, match="published already"):
        registry.publish(other, manifest_of(MODEL).model_copy(update={"sha256": sha256, "size_bytes": size}), KEY)
    with pytest.raises(RegistryError, match=r"no published model yolo-edge 9 \(published: yolo-edge 2\)"):
        registry.get("yolo-edge", "9")
    with pytest.raises(RegistryError):
        registry.get("../etc", "2")

    size = published.manifest.size_bytes

    async def pieces(offset: int) -> list[tuple[int, bytes]]:
        return [piece async for piece in read_pieces(published.path, offset, size, 1 << 20)]

    whole = asyncio.run(pieces(0))
    assert b"".join(data for _, data in whole) == MODEL.read_bytes()
    assert [offset for offset, _ in whole] == list(range(0, size, 1 << 20))
    tail = asyncio.run(pieces(size - 10))
    assert tail == [(size - 10, MODEL.read_bytes()[-10:])]
    assert asyncio.run(pieces(size)) == [(size, b"")]


@pytest.mark.parametrize("uri", ["edgeglm://only-name", "edgeglm://a/b/c", "http://x/y", "edgeglm://a/../b"])
def test_a_malformed_registry_uri_is_refused(uri: str) -> None:
    with pytest.raises(RegistryError, match="expected edgeglm://"):
        parse_uri(uri)


def test_the_edge_refuses_a_file_or_manifest_that_is_not_the_policys() -> None:
    manifest = manifest_of(MODEL)
    ref = ref_of(manifest)
    check_file(ref, MODEL, manifest.sha256, manifest.size_bytes)
    with pytest.raises(ModelRefusedError) as size:
        check_file(ref, MODEL, manifest.sha256, manifest.size_bytes - 1)
    assert size.value.reason == "size"
    with pytest.raises(ModelRefusedError) as digest:
        check_file(ref, MODEL, "0" * 64, manifest.size_bytes)
    assert digest.value.reason == "hash"
    data = sign_manifest(manifest, KEY).to_bytes()
    assert check_manifest(ref, data, [KEY.public_key()], "m.json") == manifest
    with pytest.raises(ModelRefusedError) as unsigned:
        check_manifest(ref, data, [Ed25519PrivateKey.generate().public_key()], "m.json")
    assert unsigned.value.reason == "signature"
    with pytest.raises(ModelRefusedError) as other:
        check_manifest(ref_of(manifest, version="3"), data, [KEY.public_key()], "m.json")
    assert other.value.reason == "manifest"
    assert "the policy names" in str(other.value)


def install(store: ModelStore, ref: ModelRef) -> None:
    """What the updater does with a verified download of `ref` (a file of `size_bytes` x's)."""
    part = store.part_path(ref)
    part.write_bytes(b"x" * ref.size_bytes)
    store.manifest_path(ref).write_bytes(b"{}")
    store.install(store.adopt(ref, part))


def fake_ref(version: str, size: int = 8) -> ModelRef:
    return ModelRef(
        name="m",
        version=version,
        uri=f"edgeglm://m/{version}",
        sha256=hashlib.sha256(b"x" * size).hexdigest(),
        size_bytes=size,
    )


def test_the_edge_keeps_the_current_and_the_previous_model_and_remembers_refusals(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    v1, v2, v3 = fake_ref("1"), fake_ref("2"), fake_ref("3")
    install(store, v1)
    install(store, v2)
    assert store.current is not None and store.current.version == "2"
    assert store.previous is not None and store.previous.version == "1"
    assert store.find(v1) is not None, "the previous model stays for a rollback"
    install(store, v3)
    assert store.find(v1) is None
    assert sorted(p.name for p in store.root.glob("*.onnx")) == [
        f"m-2-{v2.sha256[:12]}.onnx",
        f"m-3-{v3.sha256[:12]}.onnx",
    ]
    store.refuse(fake_ref("4"), "classes")
    # What it knows survives a restart.
    again = ModelStore(tmp_path / "models")
    assert again.current == store.current and again.previous == store.previous
    assert again.refusal(fake_ref("4")) == "classes"
    assert again.refusal(fake_ref("4", size=9)) is None, "another file under that version is tried"
    # A garbled file on disk is not trusted, nor offered for a rollback.
    assert again.current is not None
    again.path(again.current).write_bytes(b"y" * 8)
    assert not again.intact(again.current)
    assert again.find(v3) is None


def test_discarding_a_refused_file_keeps_what_runs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    running = fake_ref("1")
    install(store, running)
    refused = fake_ref("2")
    store.part_path(refused).write_bytes(b"x" * 8)
    store.adopt(refused, store.part_path(refused))
    store.manifest_path(refused).write_bytes(b"{}")
    store.discard(refused)
    store.discard(running)
    assert [p.name for p in sorted(store.root.iterdir()) if p.suffix == ".onnx"] == [f"m-1-{running.sha256[:12]}.onnx"]
    assert store.manifest_path(running).exists()


def test_a_file_model_is_copied_with_the_manifest_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "usb"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(MODEL.read_bytes())
    manifest = manifest_of(MODEL)
    ref = ref_of(manifest, uri=f"file://{folder / 'model.onnx'}")
    counted: list[int] = []
    with pytest.raises(ModelRefusedError) as unsigned:
        asyncio.run(fetch(ref, tmp_path / "m.part", "gw", NO_CHUNKS, 5.0, counted.append))
    assert unsigned.value.reason == "manifest" and "no signed manifest beside" in str(unsigned.value)
    (folder / "manifest.json").write_bytes(sign_manifest(manifest, KEY).to_bytes())
    data = asyncio.run(fetch(ref, tmp_path / "m.part", "gw", NO_CHUNKS, 5.0, counted.append))
    assert check_manifest(ref, data, [KEY.public_key()], "usb") == manifest
    assert (tmp_path / "m.part").read_bytes() == MODEL.read_bytes()
    assert counted == [manifest.size_bytes]


def test_an_mqtt_edge_not_connected_to_its_broker_tries_again_later(tmp_path: Path) -> None:
    ref = ref_of(manifest_of(MODEL))
    uplink = MqttUplink(
        MqttUplinkConfig(host="127.0.0.1", port=1), quiet_handlers("gw"), EdgeMetrics()
    )  # never started
    with pytest.raises(FetchError, match="not connected to the broker"):
        asyncio.run(fetch(ref, tmp_path / "m.part", "gw", uplink.model_chunks, 5.0, lambda _: None))
