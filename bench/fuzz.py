"""Fuzzing every decoder the outside world reaches, with hypothesis: no crash, no hang, only clear refusals.

Each target takes one generated input and holds its decoder to its contract: it returns, or raises
the one error type it documents (a `BadSampleError`, an `ImageDecodeError`, a `ConfigError`, an
`InvalidPolicyError`...), never anything else. Targets:

- `sample_bytes`: arbitrary bytes as a Sample on the wire (gRPC's deserializer, then the cloud's
  checks and decoding), and `sample_fields`: well-formed Samples with extreme field values;
- `jpeg_bytes`: a real JPEG with bytes flipped, cut, repeated or its size header rewritten;
- `edge_message`: arbitrary bytes as an EdgeMessage (the Session stream's reader);
- `signed_policy`: arbitrary bytes as a SignedPolicy offered to an edge's policy store;
- `policy_wire`: well-formed Policies with extreme values read as an edge reads them;
- `cloud_yaml`: arbitrary YAML documents as cloud.yaml.

`tests/unit/test_fuzz.py` runs a short pass of each in `make test`; `python -m bench.fuzz --examples
10000` (`make fuzz`) runs the long one and writes cases, failures (with the first input of each
distinct error), wall time, and the process's resident memory (now and at its peak) before and after
each target to bench/results/fuzz.json: a decoder that leaks shows as memory that stays.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.config import load_config as load_cloud_config
from cloud.convert import BadSampleError, sample_from_pb
from cloud.server.wire import Undecodable, lenient
from common.config import ConfigError
from common.detect.errors import ImageDecodeError
from common.detect.image import MAX_IMAGE_PIXELS, decode_image
from edge.convert import policy_from_pb
from edge.metrics import EdgeMetrics
from edge.policy.store import PolicyStore
from protos import policy_pb2, sample_pb2, session_pb2
from protos.policy_settings import InvalidPolicyError

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
_FRAME = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
JPEG = bytes(cv2.imencode(".jpg", _FRAME)[1].tobytes())


# ---------------------------------------------------------------- strategies


def mutated_jpeg() -> st.SearchStrategy[bytes]:
    """A valid JPEG, then flipped bytes, a cut, a repeat, or a rewritten frame size."""
    flips = st.lists(st.tuples(st.integers(0, len(JPEG) - 1), st.integers(0, 255)), max_size=8)

    def flip(changes: list[tuple[int, int]]) -> bytes:
        data = bytearray(JPEG)
        for at, value in changes:
            data[at] = value
        return bytes(data)

    def resize(size: tuple[int, int]) -> bytes:
        at = JPEG.index(b"\xff\xc0")
        return JPEG[: at + 5] + size[1].to_bytes(2, "big") + size[0].to_bytes(2, "big") + JPEG[at + 9 :]

    return st.one_of(
        flips.map(flip),
        st.integers(0, len(JPEG)).map(lambda n: JPEG[:n]),
        st.integers(0, len(JPEG)).map(lambda n: JPEG[:n] + b"\xff\xd9"),
        st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(resize),
        st.binary(max_size=64).map(lambda tail: JPEG + tail),
    )


def floats() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=True, allow_infinity=True, width=32)


def samples() -> st.SearchStrategy[sample_pb2.Sample]:
    """Well-formed Sample messages whose every field may hold an extreme value."""
    detection = st.builds(
        sample_pb2.Detection,
        class_id=st.integers(0, U32),
        label=st.text(max_size=80),
        score=floats(),
        box=st.builds(sample_pb2.Box, x1=floats(), y1=floats(), x2=floats(), y2=floats()),
    )
    crop = st.builds(
        sample_pb2.CropBox,
        x1=st.integers(0, U32),
        y1=st.integers(0, U32),
        x2=st.integers(0, U32),
        y2=st.integers(0, U32),
    )
    image = st.builds(
        sample_pb2.SampleImage,
        jpeg=st.one_of(mutated_jpeg(), st.just(JPEG)),
        crop=st.one_of(st.none(), crop),
        frame_width=st.integers(0, U32),
        frame_height=st.integers(0, U32),
        jpeg_quality=st.integers(0, U32),
    )
    stamp = st.builds(Timestamp, seconds=st.integers(-(1 << 62), 1 << 62), nanos=st.integers(-(1 << 31), (1 << 31) - 1))
    return st.builds(
        sample_pb2.Sample,
        sample_id=st.text(max_size=200),
        edge_id=st.text(max_size=200),
        camera_id=st.text(max_size=40),
        captured_at=stamp,
        image=image,
        detections=st.lists(detection, max_size=8),
        policy_version=st.integers(0, U64),
        mined_reason=st.integers(0, 12),
        priority=floats(),
        frame_seq=st.integers(0, U64),
        track_id=st.text(max_size=40),
        motion_area_fraction=floats(),
    )


def policies() -> st.SearchStrategy[policy_pb2.Policy]:
    """Well-formed Policy messages with extreme settings."""
    band = st.builds(policy_pb2.UncertaintyBand, label=st.text(max_size=10), low=floats(), high=floats())
    camera = st.builds(
        policy_pb2.CameraMining,
        camera_id=st.text(max_size=10),
        motion_min_area_fraction=floats(),
        random_audit_rate=floats(),
        watch_reask_interval_s=floats(),
    )
    mining = st.builds(
        policy_pb2.MiningSettings,
        uncertainty_bands=st.lists(band, max_size=4),
        default_uncertainty_band=band,
        random_audit_rate=floats(),
        resend_interval_s=floats(),
        watch_list_labels=st.lists(st.text(max_size=10), max_size=4),
        cameras=st.lists(camera, max_size=3),
    )
    uplink = st.builds(
        policy_pb2.UplinkSettings,
        budget_bytes_per_s=st.integers(0, U64),
        burst_bytes=st.integers(0, U64),
        image_mode=st.integers(0, 9),
        jpeg_quality=st.integers(0, U32),
    )
    return st.builds(
        policy_pb2.Policy,
        version=st.integers(0, U64),
        scope=st.integers(0, 9),
        scope_id=st.text(max_size=10),
        mining=mining,
        uplink=uplink,
    )


def yaml_documents() -> st.SearchStrategy[str]:
    """YAML text: nested mappings of cloud.yaml's section names with any scalars, and raw text."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
    keys = st.sampled_from(["server", "backend", "kind", "port", "admin", "users", "policy", "store", "path", "x"])
    values = st.recursive(scalars, lambda inner: st.dictionaries(keys, inner, max_size=4) | st.lists(inner, max_size=3))
    return st.one_of(st.dictionaries(keys, values, max_size=6).map(json.dumps), st.text(max_size=200))


# ---------------------------------------------------------------- targets


def check_sample_bytes(data: bytes) -> None:
    """Bytes as a Sample: unparsable, refused with a BadSampleError, or decoded within the pixel bound."""
    parsed = lenient(sample_pb2.Sample)(data)
    if isinstance(parsed, Undecodable):
        return
    check_sample_fields(parsed)


def check_sample_fields(pb: sample_pb2.Sample) -> None:
    """A Sample is refused with a BadSampleError or becomes a SampleInput whose image is bounded."""
    try:
        sample = sample_from_pb(pb)
    except BadSampleError:
        return
    assert sample.image.shape[0] * sample.image.shape[1] <= MAX_IMAGE_PIXELS


def check_jpeg(data: bytes) -> None:
    """Image bytes are decoded within the pixel bound or refused with an ImageDecodeError."""
    try:
        frame = decode_image(data, "fuzz")
    except ImageDecodeError:
        return
    assert frame.ndim == 3 and frame.shape[0] * frame.shape[1] <= MAX_IMAGE_PIXELS


def check_edge_message(data: bytes) -> None:
    """Bytes on a Session stream parse to an EdgeMessage or an Undecodable, never an exception."""
    parsed = lenient(session_pb2.EdgeMessage)(data)
    assert isinstance(parsed, Undecodable | session_pb2.EdgeMessage)
    if not isinstance(parsed, Undecodable):
        parsed.WhichOneof("kind")


class _EdgePolicies:
    """One edge's policy store under a key no fuzz input can sign with."""

    def __init__(self) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="fuzz-policy-")
        key = Ed25519PrivateKey.generate().public_key()
        self.store = PolicyStore(Path(self.folder.name), key, EdgeMetrics(), edge_id="gw-1", site_id="s")


@functools.cache
def _edge_policies() -> _EdgePolicies:
    return _EdgePolicies()


def check_signed_policy(data: bytes) -> None:
    """Bytes offered as a SignedPolicy are refused (none is signed by the edge's key); the policy stays."""
    parsed = lenient(policy_pb2.SignedPolicy)(data)
    if isinstance(parsed, Undecodable):
        return
    edge = _edge_policies()
    result = edge.store.offer(parsed)
    assert not result.applied and edge.store.current.version == 0


def check_policy_wire(pb: policy_pb2.Policy) -> None:
    """A Policy read as an edge reads it is valid or refused with an InvalidPolicyError naming a field."""
    try:
        policy = policy_from_pb(pb)
    except InvalidPolicyError as err:
        if not str(err).startswith("policy v"):
            raise AssertionError(f"the refusal does not name the policy: {err}") from err
        return
    assert 0 <= policy.mining.random_audit_rate <= 1


def check_cloud_yaml(text: str) -> None:
    """Any YAML document as cloud.yaml loads or is refused with a ConfigError."""
    with tempfile.TemporaryDirectory(prefix="fuzz-yaml-") as folder:
        path = Path(folder) / "cloud.yaml"
        path.write_text(text)
        try:
            load_cloud_config(path)
        except ConfigError:
            return


TARGETS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None]]] = {
    "sample_bytes": (st.binary(max_size=2048), check_sample_bytes),
    "sample_fields": (samples(), check_sample_fields),
    "jpeg_bytes": (mutated_jpeg(), check_jpeg),
    "edge_message": (st.binary(max_size=2048), check_edge_message),
    "signed_policy": (st.binary(max_size=512), check_signed_policy),
    "policy_wire": (policies(), check_policy_wire),
    "cloud_yaml": (yaml_documents(), check_cloud_yaml),
}


def run_target(name: str, examples: int, seed: int = 0) -> dict[str, Any]:
    """Run one target for `examples` cases; its figures (failures with their first input)."""
    strategy, check = TARGETS[name]
    failures: dict[str, str] = {}
    cases = 0

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=seed == 0,
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def body(value: Any) -> None:
        nonlocal cases
        cases += 1
        try:
            check(value)
        except Exception as err:  # recorded, not raised: the run goes on and counts every distinct error
            failures.setdefault(f"{type(err).__name__}: {str(err)[:200]}", repr(value)[:300])

    rss_before, peak_before = _rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    logging.disable(logging.WARNING)  # every refusal logs a line; tens of thousands of them say nothing here
    try:
        body()
    finally:
        logging.disable(logging.NOTSET)
    return {
        "cases": cases,
        "failures": len(failures),
        "distinct_errors": failures,
        "seconds": round(time.perf_counter() - started, 2),
        "rss_kib_before": rss_before,
        "rss_kib_after": _rss_kib(),
        "peak_rss_kib_before": peak_before,
        "peak_rss_kib_after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def _rss_kib() -> int:
    """The process's resident memory now (VmRSS), after a collection: what stays, not what peaked."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def main(
    out: Annotated[Path, typer.Option(help="Where the JSON results go.")] = Path("bench/results/fuzz.json"),
    examples: Annotated[int, typer.Option(min=1, help="Cases per target.")] = 10_000,
    only: Annotated[list[str] | None, typer.Option(help="Run these targets only.")] = None,
) -> None:
    """Fuzz every target with `examples` cases each; exit 1 when any target failed."""
    names = only or list(TARGETS)
    results: dict[str, Any] = {}
    for name in names:
        typer.echo(f"{name}: {examples} cases ...", nl=False)
        results[name] = run_target(name, examples)
        figures = results[name]
        typer.echo(f" {figures['cases']} run, {figures['failures']} failures, {figures['seconds']} s")
    report = {"examples_per_target": examples, "python": platform.python_version(), "targets": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    if any(figures["failures"] for figures in results.values()):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
