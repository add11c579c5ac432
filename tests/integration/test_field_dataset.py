"""The field dataset (issue 15 §1) on a real service, real files and a real full disk, and its YOLO export.

Every judged sample is kept once, as sent, with the cloud's labels in the image's pixels; a resend or
a near duplicate is not kept again; retention and the size cap remove the oldest; a full disk costs
records, never verdicts; the export splits by track or time window and says what it left out. Images
go to the dataset's folder or to an S3 bucket (moto's server, a real process); with PostgreSQL and
S3, two replicas keep one dataset.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cloud.cli import app as cloud_app
from cloud.config import CloudConfig
from cloud.dataset import DatasetConfig, FieldDataset, export_yolo
from cloud.dataset.images import ImageStoreError
from cloud.dataset.store import image_file
from cloud.ingest.decode import decode_sample
from cloud.metrics import CloudMetrics
from cloud.service import CloudService
from common.boxes import iou
from protos import sample_pb2, verdict_pb2
from sim.world.samples import frame_sample
from tests.helpers.cloud import busy_frames, make_config, make_sample, running, send, send_samples, truth
from tests.helpers.disk import fill, small_tmpfs
from tests.helpers.postgres import PostgresServer
from tests.helpers.s3 import S3Server


def with_dataset(tmp_path: Path, clip: Path, folder: Path | None = None, **sections: Any) -> CloudConfig:
    dataset = {"enabled": True, "path": str(folder or tmp_path / "dataset"), **sections.pop("dataset", {})}
    return make_config(tmp_path, clip, dataset=dataset, **sections)


def bucket_of(s3: S3Server) -> dict[str, Any]:
    """dataset.storage for a new bucket of the test server."""
    return {
        "kind": "s3",
        "bucket": s3.new_bucket(),
        "endpoint_url": s3.endpoint_url,
        "credentials_file": str(s3.credentials_file),
    }


@pytest.fixture(params=["folder", "s3"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The kept records' tests run on both image stores: the dataset's folder and an S3 bucket."""
    if request.param == "folder":
        return {"kind": "folder"}
    return bucket_of(request.getfixturevalue("s3"))


def exists(dataset: FieldDataset, name: str) -> bool:
    try:
        dataset.images.get(name)
    except ImageStoreError:
        return False
    return True


def outcomes(service: CloudService) -> dict[str, float]:
    names = ("kept", "near_duplicate", "duplicate", "not_decided", "dropped_busy", "failed")
    registry = service.metrics.registry
    return {n: registry.get_sample_value("edgeglm_cloud_dataset_records_total", {"outcome": n}) or 0.0 for n in names}


def apart(clip: Path, count: int) -> list[int]:
    """Busy frames whose objects are all somewhere else than in every frame chosen before."""
    chosen: list[int] = []
    objects = truth(clip)
    for frame in busy_frames(clip):
        boxes = [o["box"] for o in objects[frame]]
        if all(all(iou(b, o["box"]) < 0.5 for b in boxes for o in objects[c]) for c in chosen):
            chosen.append(frame)
        if len(chosen) == count:
            return chosen
    raise AssertionError("the clip has too few frames with objects in new places")


async def test_every_judged_sample_is_kept_once_as_sent_with_the_clouds_labels(
    tmp_path: Path, clip: Path, storage: dict[str, Any]
) -> None:
    frames = apart(clip, 3)
    async with running(with_dataset(tmp_path, clip, dataset={"storage": storage})) as service:
        assert service.dataset is not None
        sent = await send(service, clip, "gw-1", frames, "s")
        await send(service, clip, "gw-1", frames[:1], "s")  # a resend: its stored verdict, no second record
        repeat = make_sample(clip, frames[0], "s-repeat", "gw-1")  # the same view under another id
        await send_samples(service, "gw-1", [repeat])
        await service.dataset.flush()
        records = sorted(await service.dataset.records(), key=lambda pair: pair[0].sample_id)
        images = [service.dataset.images.get(name) for _, name in records]
        counted = outcomes(service)
    assert [r.sample_id for r, _ in records] == [s.sample_id for s in sent]  # judged in any order
    for (record, _), image, sample in zip(records, images, sent, strict=True):
        assert image == sample.image.jpeg, "the image as the edge sent it"
        objects = truth(clip)[sample.frame_seq]
        assert sorted(item.label for item in record.cloud) == sorted(o["label"] for o in objects)
        for item in record.cloud:  # a whole frame: the image's pixels are the frame's
            assert item.box is not None
            assert max(iou(item.box, o["box"]) for o in objects if o["label"] == item.label) > 0.99
        assert (record.decision, record.mined_reason, record.width, record.height) == (
            "confirmed",
            "uncertainty_band",
            640,
            480,
        )
    assert counted["kept"] == 3 and counted["near_duplicate"] == 1
    assert counted["duplicate"] == 0, "a resend never reached the dataset twice (the store answered it)"


def decided(pb: sample_pb2.Sample, labels: tuple[str, ...] = ()) -> tuple[Any, verdict_pb2.Verdict]:
    """The decoded sample and a backend verdict finding `labels` at the edge's boxes (none: rejected)."""
    sample, _ = decode_sample(pb)
    found = [d for d in pb.detections if d.label in labels]
    decision = verdict_pb2.DECISION_CONFIRMED if found else verdict_pb2.DECISION_REJECTED
    verdict = verdict_pb2.Verdict(
        sample_id=pb.sample_id, decision=decision, detections=found, origin=verdict_pb2.VERDICT_ORIGIN_BACKEND
    )
    return sample, verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_size_cap_and_retention_remove_the_oldest_records_and_their_images(
    tmp_path: Path, clip: Path, storage: dict[str, Any]
) -> None:
    clock = Clock()
    frames = apart(clip, 4)
    samples = [make_sample(clip, frame, f"s-{number}") for number, frame in enumerate(frames)]
    sizes = [len(pb.image.jpeg) for pb in samples]
    cap = max(1 << 16, sizes[0] + sizes[1] + sizes[2] - 1)  # the three do not fit: the oldest must go
    config = DatasetConfig.model_validate(
        {"path": str(tmp_path / "dataset"), "max_bytes": cap, "retention_s": 600, "storage": storage}
    )
    dataset = FieldDataset(config, CloudMetrics(), clock=clock)
    await dataset.open()
    try:
        for pb in samples[:3]:
            dataset.observe(*decided(pb, tuple(d.label for d in pb.detections)))
            await dataset.flush()
            clock.now += 10
        first = await dataset.records()  # s-0 went for the cap when s-2 came
        capped = [r.sample_id for r, _ in first]
        clock.now += 3600  # past retention: every record so far goes when the next one is kept
        dataset.observe(*decided(samples[3]))  # rejected, nothing found: a background image
        await dataset.flush()
        left = await dataset.records()
        total = await dataset.total_bytes()
        still_there = [name for _, name in first if exists(dataset, name)]
        evicted = exists(dataset, image_file("edge-1", "s-0"))
    finally:
        await dataset.close()
    assert sum(sizes[:3]) > cap, "the test's images fit the smallest cap allowed; use larger frames"
    assert capped == ["s-1", "s-2"], "the oldest went for the size cap"
    assert [r.sample_id for r, _ in left] == ["s-3"] and left[0][0].cloud == ()
    assert still_there == [] and not evicted, "removed records take their images"
    assert total == sizes[3]


async def test_a_full_disk_costs_records_never_verdicts_and_keeping_resumes_with_space(
    tmp_path: Path, clip: Path
) -> None:
    frames = apart(clip, 3)
    with small_tmpfs(tmp_path / "disk", size=2 << 20) as disk:
        async with running(with_dataset(tmp_path, clip, folder=disk / "dataset")) as service:
            assert service.dataset is not None
            filler = fill(disk)
            judged = await send(service, clip, "gw-1", frames[:2], "full")  # every verdict still comes back
            await service.dataset.flush()
            while_full = outcomes(service)
            filler.unlink()
            await send(service, clip, "gw-1", frames[2:], "later")
            await service.dataset.flush()
            kept = [r.sample_id for r, _ in await service.dataset.records()]
    assert len(judged) == 2 and while_full["failed"] == 2 and while_full["kept"] == 0
    assert kept == [f"later-{frames[2]:03d}"]


async def test_an_image_left_by_a_crash_before_its_row_is_removed_at_open(tmp_path: Path) -> None:
    stray = tmp_path / "dataset" / "images" / "ab" / "cd.jpg"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"\xff\xd8 half a record")
    dataset = FieldDataset(DatasetConfig(path=tmp_path / "dataset"), CloudMetrics())
    await dataset.open()
    await dataset.close()
    assert not stray.exists()


async def records_for_export(tmp_path: Path, clip: Path) -> FieldDataset:
    """Tracked and untracked records of two cameras, confirmed and rejected, one with a class outside the list."""
    frames = apart(clip, 6)
    dataset = FieldDataset(DatasetConfig(path=tmp_path / "dataset", near_duplicate_bits=0), CloudMetrics())
    await dataset.open()
    for number, frame in enumerate(frames):
        pb = frame_sample(clip, frame, f"s-{number}", "gw-1", camera_id="cam0" if number % 2 else "cam1")
        pb.track_id = f"t{number // 2}" if number < 4 else ""
        pb.captured_at.FromSeconds(1_800_000_000 + 300 * number)
        labels = tuple(d.label for d in pb.detections) if number != 5 else ()
        dataset.observe(*decided(pb, labels))
    await dataset.flush()
    return dataset


async def test_the_export_is_a_yolo_dataset_split_by_track_and_time(tmp_path: Path, clip: Path) -> None:
    dataset = await records_for_export(tmp_path, clip)
    records = await dataset.records()
    await dataset.close()
    classes = sorted({item.label for record, _ in records for item in record.cloud})
    report = export_yolo(records, dataset.images, tmp_path / "yolo", classes, val_share=0.5, group_s=60)
    out = tmp_path / "yolo"
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {"train": "images/train", "val": "images/val", "names": dict(enumerate(classes))}
    written = {split: sorted(p.stem for p in (out / "images" / split).glob("*.jpg")) for split in ("train", "val")}
    assert sum(map(len, written.values())) == len(records) == report.images["train"] + report.images["val"]
    by_stem = {Path(name).stem: record for record, name in records}
    for split, stems in written.items():
        for stem in stems:
            lines = (out / "labels" / split / f"{stem}.txt").read_text().splitlines()
            record = by_stem[stem]
            assert len(lines) == len(record.cloud)
            for line in lines:
                cls, *xywh = line.split()
                assert classes[int(cls)] in {item.label for item in record.cloud}
                assert all(0.0 <= float(v) <= 1.0 for v in xywh)
    tracks = {split: {by_stem[s].track_id for s in stems if by_stem[s].track_id} for split, stems in written.items()}
    assert not tracks["train"] & tracks["val"], "a track's records stay on one side"
    assert report.backgrounds["train"] + report.backgrounds["val"] == 1
    assert json.loads((out / "report.json").read_text())["classes"] == classes


def test_the_cli_exports_and_leaves_out_a_class_the_model_lacks(tmp_path: Path, clip: Path) -> None:
    async def prepare() -> list[Any]:
        dataset = await records_for_export(tmp_path, clip)
        try:
            return await dataset.records()
        finally:
            await dataset.close()

    records = asyncio.run(prepare())  # the CLI runs its own event loop
    present = sorted({item.label for record, _ in records for item in record.cloud})
    keep = ["an-edge-class", *present[:-1]]  # the "edge model" lacks the last class the cloud found
    lacking = sum(any(item.label == present[-1] for item in record.cloud) for record, _ in records)
    out = tmp_path / "yolo"
    result = CliRunner().invoke(
        cloud_app,
        ["dataset", "export", "--dir", str(tmp_path / "dataset"), "--out", str(out), "--classes", ",".join(keep)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["left_out"] == ({"unknown_class": lacking} if lacking else {})
    assert report["images"]["train"] + report["images"]["val"] == len(records) - lacking
    assert "left out" in result.output and str(out / "report.json") in result.output
    missing = CliRunner().invoke(cloud_app, ["dataset", "export", "--dir", str(tmp_path / "nothing"), "--out", "x"])
    assert missing.exit_code == 1 and "holds no field dataset" in missing.output


def test_a_size_cap_below_one_image_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        DatasetConfig(max_bytes=10)


async def test_two_replicas_on_postgresql_and_s3_keep_one_dataset(
    postgres: PostgresServer, s3: S3Server, tmp_path: Path, clip: Path
) -> None:
    """The records are rows of the shared database and the images objects of one bucket: one export holds both
    replicas' samples, and a sample both replicas are handed is kept once."""
    dsn_file = tmp_path / "pg-dsn"
    dsn_file.write_text(postgres.new_dsn())
    bucket = bucket_of(s3)
    frames = apart(clip, 4)
    configs = [
        with_dataset(
            tmp_path / name,
            clip,
            store={"kind": "postgres", "dsn_file": str(dsn_file)},
            policy={"signing_key": str(tmp_path / "keys" / "policy-signing.key"), "create_signing_key": True},
            dataset={"storage": bucket},
        )
        for name in ("a", "b")
    ]
    async with running(configs[0]) as a, running(configs[1]) as b:
        assert a.dataset is not None and b.dataset is not None
        await send(a, clip, "gw-1", frames[:2], "on-a")
        await send(b, clip, "gw-2", frames[2:], "on-b")
        await a.dataset.flush()
        await b.dataset.flush()
        records = await a.dataset.records()
        images = [a.dataset.images.get(name) for _, name in records]
    assert sorted(r.sample_id for r, _ in records) == sorted(
        [f"on-a-{f:03d}" for f in frames[:2]] + [f"on-b-{f:03d}" for f in frames[2:]]
    )
    assert all(image.startswith(b"\xff\xd8") for image in images)
    assert len(s3.keys(bucket["bucket"])) == 4
