"""The simulation oracle: verdicts from a clip's ground truth, the shared decision rule, a seeded delay."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import TypeAdapter, ValidationError

from cloud.backends import BackendConfig, BackendStartError, OracleBackend, OracleBackendConfig, build_backend
from cloud.convert import sample_from_pb
from protos import sample_pb2
from sim.world.clips import ClipSpec, write_clip

CAMERA = "yard"
# Frames 0-20 are empty; a motorcycle crosses from frame ~21 (seed 0, objects arrive early and often).
CLIP = ClipSpec(seed=0, seconds=10, fps=5, quiet_start_seconds=1.0, mean_gap_seconds=3.0)
EMPTY_FRAME = 5


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(CLIP, tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def busy_frame(clip) -> tuple[int, dict[str, object]]:
    """The first frame with one large object in view, and that object."""
    for line in (clip / "gt.jsonl").read_text().splitlines():
        record = json.loads(line)
        large = [o for o in record["objects"] if not o["small"] and o["box"][2] - o["box"][0] > 100]
        if large:
            return record["frame"], large[0]
    raise AssertionError("the clip has no large object; pick another ClipSpec")


def sample(clip: Path, frame: int, detections=(), crop=None, camera=CAMERA):
    pb = sample_pb2.Sample(
        sample_id=f"{camera}-{frame}",
        edge_id="edge-1",
        camera_id=camera,
        captured_at=Timestamp(seconds=1_767_225_600),
        image=sample_pb2.SampleImage(
            jpeg=(clip / "frames" / f"{min(frame, CLIP.frames - 1):06d}.jpg").read_bytes(),
            frame_width=CLIP.width,
            frame_height=CLIP.height,
        ),
        detections=[
            sample_pb2.Detection(label=label, score=0.4, box=sample_pb2.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]))
            for label, b in detections
        ],
        mined_reason=sample_pb2.MINED_REASON_UNCERTAINTY_BAND,
        frame_seq=frame,
    )
    if crop is not None:
        # The image stays the full frame: the oracle reads only the geometry, not the pixels.
        pb.image.crop.CopyFrom(sample_pb2.CropBox(x1=crop[0], y1=crop[1], x2=crop[2], y2=crop[3]))
    return sample_from_pb(pb)


class RecordedSleep:
    def __init__(self):
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def oracle(clip, sleep=None, **config) -> OracleBackend:
    backend = OracleBackend(
        OracleBackendConfig(ground_truth={CAMERA: clip / "gt.jsonl"}, **config), sleep=sleep or RecordedSleep()
    )
    await backend.start()
    return backend


def shifted(box, dx):
    return (box[0] + dx, box[1], box[2] + dx, box[3])


async def test_oracle_confirms_an_edge_detection_that_matches_a_true_object(clip, busy_frame):
    frame, obj = busy_frame
    backend = await oracle(clip)

    (result,) = await backend.infer([sample(clip, frame, [(obj["label"], shifted(obj["box"], 10))])])

    assert result.decision == "confirmed"
    assert [(d.label, d.box) for d in result.detections] == [(obj["label"], tuple(obj["box"]))]
    assert result.text == "simulation oracle"
    assert result.confidence == 1.0
    assert backend.name == "oracle"


@pytest.mark.parametrize("where", ["empty frame", "wrong place", "wrong label"])
async def test_oracle_rejects_an_edge_detection_with_no_true_object_behind_it(clip, busy_frame, where):
    frame, obj = busy_frame
    cases = {
        "empty frame": (EMPTY_FRAME, obj["label"], obj["box"]),
        "wrong place": (frame, obj["label"], (600, 400, 640, 480)),
        "wrong label": (frame, "rocket" if obj["label"] != "rocket" else "cup", obj["box"]),
    }
    frame_seq, label, box = cases[where]
    backend = await oracle(clip)

    (result,) = await backend.infer([sample(clip, frame_seq, [(label, box)])])

    assert result.decision == "rejected"
    assert result.text == "simulation oracle"


async def test_oracle_counts_a_true_object_anywhere_in_a_crop(clip, busy_frame):
    frame, obj = busy_frame
    x1, y1, x2, y2 = (int(v) for v in obj["box"])
    around = (max(0, x1 - 20), max(0, y1 - 20), min(CLIP.width, x2 + 20), min(CLIP.height, y2 + 20))
    elsewhere = (0, 400, 80, 480) if y2 < 400 else (0, 0, 80, 80)
    # The edge box is off the object: in a crop, the object being there is enough.
    edge_box = (around[0], around[1], around[0] + 10, around[1] + 10)
    backend = await oracle(clip)

    inside, outside = await backend.infer(
        [
            sample(clip, frame, [(obj["label"], edge_box)], crop=around),
            sample(clip, frame, [(obj["label"], edge_box)], crop=elsewhere),
        ]
    )

    assert inside.decision == "confirmed"
    assert outside.decision == "rejected"
    assert outside.detections == []


async def test_motion_without_detection_is_confirmed_only_when_something_is_there(clip, busy_frame):
    frame, _ = busy_frame
    backend = await oracle(clip)

    busy, empty = await backend.infer([sample(clip, frame), sample(clip, EMPTY_FRAME)])

    assert busy.decision == "confirmed"
    assert empty.decision == "rejected"


@pytest.mark.parametrize(("camera", "frame", "named"), [("porch", 3, "camera 'porch'"), (CAMERA, 999, "frame 999")])
async def test_sample_of_an_unknown_camera_or_frame_is_unsure_and_says_so(clip, camera, frame, named):
    backend = await oracle(clip)

    (result,) = await backend.infer([sample(clip, frame, [("person", (0, 0, 10, 10))], camera=camera)])

    assert result.decision == "unsure"
    assert "no ground truth" in result.text
    assert named in result.text


async def test_each_batch_waits_the_modelled_delay_with_seeded_jitter(clip):
    first, second, other_seed = RecordedSleep(), RecordedSleep(), RecordedSleep()
    for sleep, seed in ((first, 3), (second, 3), (other_seed, 4)):
        backend = await oracle(clip, sleep=sleep, delay_ms=200, jitter_ms=50, seed=seed)
        for _ in range(5):
            await backend.infer([sample(clip, EMPTY_FRAME), sample(clip, EMPTY_FRAME + 1)])

    assert len(first.delays) == 5
    assert all(0.2 <= delay <= 0.25 for delay in first.delays)
    assert first.delays == second.delays
    assert first.delays != other_seed.delays


async def test_missing_ground_truth_file_fails_start_naming_it(tmp_path):
    backend = OracleBackend(OracleBackendConfig(ground_truth={CAMERA: tmp_path / "nowhere" / "gt.jsonl"}))

    with pytest.raises(BackendStartError, match=r"ground_truth\['yard'\].*nowhere/gt.jsonl"):
        await backend.start()


async def test_ground_truth_may_be_given_as_the_clip_folder(clip, busy_frame):
    frame, obj = busy_frame
    backend = OracleBackend(OracleBackendConfig(ground_truth={CAMERA: clip}, delay_ms=0, jitter_ms=0))
    await backend.start()

    (result,) = await backend.infer([sample(clip, frame, [(obj["label"], obj["box"])])])

    assert result.decision == "confirmed"
    assert backend.model_version.startswith("sha256:")


def test_backend_config_selects_the_plugin_by_kind(clip):
    adapter = TypeAdapter(BackendConfig)

    backend = build_backend(adapter.validate_python({"kind": "oracle", "ground_truth": {CAMERA: str(clip)}}))

    assert isinstance(backend, OracleBackend)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        adapter.validate_python({"kind": "tarot"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        adapter.validate_python({"kind": "oracle", "delay": 5})


OTHER_CLIP = ClipSpec(seed=4, seconds=3, fps=5, quiet_start_seconds=0.0, mean_gap_seconds=0.5)


@pytest.fixture(scope="module")
def other_clip(tmp_path_factory) -> Path:
    """A second clip, busy where CLIP is still empty."""
    return write_clip(OTHER_CLIP, tmp_path_factory.mktemp("other"))


def first_object(clip: Path, frame: int) -> dict[str, object]:
    record = json.loads((clip / "gt.jsonl").read_text().splitlines()[frame])
    assert record["objects"], f"frame {frame} of {clip} is empty; pick another"
    found: dict[str, object] = record["objects"][0]
    return found


async def test_cameras_that_share_an_id_on_two_edges_are_judged_against_their_own_edge_truth(clip, other_clip):
    # Frame EMPTY_FRAME is empty in CLIP but has an object in OTHER_CLIP: the same sample is confirmed
    # for the edge whose camera sees OTHER_CLIP and rejected for the one whose camera sees CLIP.
    obj = first_object(other_clip, EMPTY_FRAME)
    seen = [(obj["label"], obj["box"])]
    backend = OracleBackend(
        OracleBackendConfig(
            ground_truth={f"edge-a/{CAMERA}": clip, f"edge-b/{CAMERA}": other_clip, CAMERA: clip},
            delay_ms=0,
            jitter_ms=0,
        )
    )
    await backend.start()
    samples = []
    for edge in ("edge-a", "edge-b", "edge-c"):
        one = sample(clip, EMPTY_FRAME, seen)
        samples.append(dataclasses.replace(one, edge_id=edge, sample_id=f"{edge}-{EMPTY_FRAME}"))

    on_a, on_b, on_c = await backend.infer(samples)

    assert on_a.decision == "rejected"
    assert on_b.decision == "confirmed"
    assert [d.label for d in on_b.detections] == [obj["label"]]
    assert on_c.decision == "rejected"  # no "edge-c/yard": the camera-only key applies


async def test_a_ground_truth_file_named_by_many_keys_is_read_once(clip, monkeypatch):
    reads: list[Path] = []
    read_text = Path.read_text

    def counting(self: Path, *args, **kwargs) -> str:
        reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    keys = {f"edge-{i}/cam{c}": (clip if i % 2 else clip / "gt.jsonl") for i in range(50) for c in range(3)}
    backend = OracleBackend(OracleBackendConfig(ground_truth=keys, delay_ms=0, jitter_ms=0))
    await backend.start()
    monkeypatch.undo()

    assert reads == [(clip / "gt.jsonl").resolve()]
    (result,) = await backend.infer(
        [dataclasses.replace(sample(clip, EMPTY_FRAME), edge_id="edge-49", camera_id="cam2")]
    )
    assert result.decision == "rejected"  # judged from the clip (an unknown key would be "unsure")
