"""FieldDataset: every judged sample's image, as the edge sent it, with the cloud's labels and boxes.

Each backend verdict that decided (confirmed or rejected; never an unsure answer or a fallback) is a
label the edge model lacked. `observe` (an `IngestCore` observer, on the event loop) turns it into a
`FieldRecord` and hands it to the records' database worker (one thread on the dataset's own SQLite
index, a few on a PostgreSQL store); at most `max_pending` wait, beyond that a record is dropped and
counted, so a slow disk never slows judging. For each record the worker:

- skips a near duplicate: a 64-bit difference hash (`imagehash.dhash`) within `near_duplicate_bits`
  of one of the camera's `near_duplicate_window` newest records with the same labels, in the same
  places (every box matched at IoU >= 0.7: a parked car asked about again; a person who walked on
  is a new record even though a static camera's frames all hash alike);
- writes the JPEG exactly as received (`images/<2 hex>/<32 hex>.jpg`, named by a hash of edge and
  sample id, so no id reaches a path) to the image store (`cloud.dataset.images`: a folder or an S3
  bucket), then its row (`field_records`): who, where, when, why it was mined, the edge's detections
  and the cloud's, in the image's own pixels;
- removes records past `retention_s`, then the oldest beyond `max_bytes`, images and rows.

A crash between the image and its row leaves an orphan image: `open` removes it from a folder (a
bucket is not listed at every start). A full disk fails the
write with a counted error and a warning; judging goes on, and records are kept again once there is
space. `edgeglm_cloud_dataset_records_total{outcome}` counts every verdict offered, by what became
of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud.convert import SampleInput
from cloud.dataset.config import DatasetConfig
from cloud.dataset.images import ImageStore, image_store
from cloud.metrics import CloudMetrics
from cloud.store.db import Conn, Database
from cloud.store.field import FIELD_STATEMENTS
from cloud.store.sqlite import StoreError, open_with_tables, sqlite_unless
from common.boxes import iou
from protos import verdict_pb2

logger = logging.getLogger(__name__)
Box = tuple[float, float, float, float]
SAME_BOX_IOU = 0.7  # two boxes this alike are the same object in the same place
CAP_BATCH = 16  # records read at a time when the size cap removes the oldest
_DECIDED = {verdict_pb2.DECISION_CONFIRMED: "confirmed", verdict_pb2.DECISION_REJECTED: "rejected"}


@dataclass(frozen=True)
class Labelled:
    """One object in a record: its label, the edge's score (None: the cloud's), its box in image pixels."""

    label: str
    box: Box | None  # None: the answer named the object without a box
    score: float | None = None


@dataclass(frozen=True)
class FieldRecord:
    """One judged sample as a training record; boxes in the pixels of the image as sent."""

    edge_id: str
    sample_id: str
    camera_id: str
    frame_seq: int
    captured_at: float
    track_id: str
    mined_reason: str
    decision: str  # confirmed | rejected
    confidence: float
    cloud: tuple[Labelled, ...]  # what the cloud found: the labels to learn
    edge: tuple[Labelled, ...]  # what the edge had said, with its scores
    width: int
    height: int
    crop: Box | None  # where the image sits in the frame (None: the whole frame)
    frame_size: tuple[int, int]
    backend: str
    model: str
    edge_model: str

    @property
    def labels(self) -> str:
        """The cloud's labels, sorted and joined: what near duplicates must share."""
        return ",".join(sorted({item.label for item in self.cloud}))

    def to_json(self) -> str:
        """The record as one JSON object."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FieldRecord:
        """A record `to_json` wrote."""
        raw = json.loads(text)
        for side in ("cloud", "edge"):
            raw[side] = tuple(
                Labelled(i["label"], None if i["box"] is None else tuple(i["box"]), i["score"]) for i in raw[side]
            )
        raw["crop"] = None if raw["crop"] is None else tuple(raw["crop"])
        raw["frame_size"] = tuple(raw["frame_size"])
        return cls(**raw)


def record_of(sample: SampleInput, verdict: verdict_pb2.Verdict) -> FieldRecord | None:
    """The training record of a verdict, or None when it decided nothing (unsure, a fallback)."""
    decision = _DECIDED.get(verdict.decision)
    if decision is None or verdict.origin != verdict_pb2.VERDICT_ORIGIN_BACKEND:
        return None
    region = sample.region
    width, height = region.image_wh

    def in_image(frame_box: Box) -> Box | None:
        x1, y1, x2, y2 = region.to_image(frame_box)
        x1, x2 = max(0.0, min(width, x1)), max(0.0, min(width, x2))
        y1, y2 = max(0.0, min(height, y1)), max(0.0, min(height, y2))
        return (x1, y1, x2, y2) if x2 - x1 >= 1 and y2 - y1 >= 1 else None

    cloud = tuple(
        Labelled(d.label, in_image((d.box.x1, d.box.y1, d.box.x2, d.box.y2)) if d.HasField("box") else None)
        for d in verdict.detections
    )
    edge = tuple(Labelled(d.label, in_image(d.box), d.score) for d in sample.detections)
    crop = None if sample.crop is None else (sample.crop.x1, sample.crop.y1, sample.crop.x2, sample.crop.y2)
    return FieldRecord(
        edge_id=sample.edge_id,
        sample_id=sample.sample_id,
        camera_id=sample.camera_id,
        frame_seq=sample.frame_seq,
        captured_at=sample.captured_at,
        track_id=sample.track_id,
        mined_reason=sample.mined_reason,
        decision=decision,
        confidence=float(verdict.confidence),
        cloud=cloud,
        edge=edge,
        width=width,
        height=height,
        crop=crop,
        frame_size=sample.frame_size,
        backend=verdict.backend,
        model=f"{verdict.model_name} {verdict.model_version}".strip(),
        edge_model=f"{sample.edge_model_name} {sample.edge_model_version}".strip(),
    )


def image_file(edge_id: str, sample_id: str) -> str:
    """The image's path under the dataset folder: a hash of its key, so no id reaches the filesystem."""
    digest = hashlib.sha256(f"{edge_id}\0{sample_id}".encode()).hexdigest()
    return f"images/{digest[:2]}/{digest[2:34]}.jpg"


def difference_hash(image: NDArray[np.uint8]) -> str:
    """The 64-bit difference hash of a BGR image, as 16 hex digits (imagehash's dhash)."""
    import imagehash
    from PIL import Image

    return str(imagehash.dhash(Image.fromarray(np.ascontiguousarray(image[..., ::-1]))))


def same_objects(a: FieldRecord, b: FieldRecord, min_iou: float = SAME_BOX_IOU) -> bool:
    """Whether two records show the cloud's objects in the same places (every box of one matched in the
    other): a static camera's frames all hash alike, and only the objects tell a new one from a repeat."""
    if len(a.cloud) != len(b.cloud):
        return False
    left = list(b.cloud)
    for item in a.cloud:
        match = next(
            (
                other
                for other in left
                if other.label == item.label
                and (item.box is None) == (other.box is None)
                and (item.box is None or other.box is None or iou(item.box, other.box) >= min_iou)
            ),
            None,
        )
        if match is None:
            return False
        left.remove(match)
    return True


def hash_distance(a: str, b: str) -> int:
    """Bits that differ between two hashes `difference_hash` made."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


class FieldDataset:
    """The field dataset; `observe` is safe on the event loop, the rest are coroutines."""

    def __init__(
        self,
        config: DatasetConfig,
        metrics: CloudMetrics,
        clock: Callable[[], float] = time.time,
        *,
        database: Database | None = None,
    ) -> None:
        """Records in `database` (PostgreSQL, shared by replicas) or config.path/index.sqlite; images where
        config.storage says; counted in `metrics`."""
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._db = sqlite_unless(database, config.path / "index.sqlite", "field dataset", _connect)
        self.images: ImageStore = image_store(config.storage, config.path)
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def where(self) -> str:
        """Where the records and the images are."""
        return f"records in {self._db.where}, images in {self.images.where}"

    async def open(self) -> None:
        """Open (or create) the records and remove images no record names (a crash between the two)."""
        await self._db.run("open", lambda conn: None)
        if self.images.sweeps:  # a folder: cheap to list, so the names are worth reading
            named = await self._db.run(
                "names", lambda conn: {str(row[0]) for row in conn.execute("SELECT file FROM field_records").fetchall()}
            )
            swept = await asyncio.to_thread(self.images.sweep, named)
            if swept:
                logger.info("field dataset: %d images no record names removed", swept)
        self._metrics.dataset_bytes.set(await self.total_bytes())

    def observe(self, sample: SampleInput, verdict: verdict_pb2.Verdict) -> None:
        """Queue the record of one backend verdict (O(1) on the loop; never raises)."""
        try:
            record = record_of(sample, verdict)
        except Exception:
            logger.exception("field dataset: no record for sample %s", sample.sample_id)
            self._metrics.dataset_records.labels("failed").inc()
            return
        if record is None:
            self._metrics.dataset_records.labels("not_decided").inc()
            return
        if len(self._pending) >= self._config.max_pending:
            self._metrics.dataset_records.labels("dropped_busy").inc()
            return
        task = asyncio.get_running_loop().create_task(self._keep(record, sample))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait until every queued record is written (or refused)."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    async def count(self) -> int:
        """Records kept."""
        row = await self._db.run("count", lambda conn: conn.execute("SELECT COUNT(*) FROM field_records").fetchone())
        return int(row[0])

    async def total_bytes(self) -> int:
        """Bytes of the images kept."""
        row = await self._db.run(
            "bytes", lambda conn: conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM field_records").fetchone()
        )
        return int(row[0])

    async def records(self) -> list[tuple[FieldRecord, str]]:
        """Every record with its image's name (`images.get` reads it), oldest kept first."""
        rows = await self._db.run(
            "records", lambda conn: conn.execute("SELECT record, file FROM field_records ORDER BY kept_at").fetchall()
        )
        return [(FieldRecord.from_json(str(text)), str(file)) for text, file in rows]

    async def close(self) -> None:
        """Write what is queued, then close the records' database."""
        await self.flush()
        await self._db.close()

    async def _keep(self, record: FieldRecord, sample: SampleInput) -> None:
        try:
            outcome = await self._db.run("keep", lambda conn: self._write(conn, record, sample.jpeg, sample.image))
        except (StoreError, OSError) as err:
            logger.warning("field dataset: sample %s not kept (%s)", record.sample_id, err)
            outcome = "failed"
        except Exception:
            logger.exception("field dataset: sample %s not kept", record.sample_id)
            outcome = "failed"
        self._metrics.dataset_records.labels(outcome).inc()

    def _write(self, conn: Conn, record: FieldRecord, jpeg: bytes, image: NDArray[np.uint8]) -> str:
        """Keep one record unless it is a near duplicate; then enforce retention and the size cap (a worker thread)."""
        key = (record.edge_id, record.sample_id)
        if conn.execute("SELECT 1 FROM field_records WHERE edge_id = ? AND sample_id = ?", key).fetchone():
            return "duplicate"
        dhash = difference_hash(image)
        recent = conn.execute(
            "SELECT dhash, record FROM field_records WHERE edge_id = ? AND camera_id = ? AND labels = ?"
            " ORDER BY kept_at DESC LIMIT ?",
            (record.edge_id, record.camera_id, record.labels, self._config.near_duplicate_window),
        ).fetchall()
        for other, text in recent:
            if hash_distance(dhash, str(other)) <= self._config.near_duplicate_bits and same_objects(
                record, FieldRecord.from_json(str(text))
            ):
                return "near_duplicate"
        if not jpeg:
            raise StoreError(f"sample {record.sample_id}: no JPEG to keep")
        file = image_file(*key)
        self.images.put(file, jpeg)
        try:
            inserted = conn.execute(
                "INSERT INTO field_records (edge_id, sample_id, camera_id, kept_at, file, bytes, dhash, labels, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (*key, record.camera_id, self._clock(), file, len(jpeg), dhash, record.labels, record.to_json()),
            ).rowcount
        except Exception:
            self.images.delete([file])
            raise
        if inserted != 1:  # another replica kept the same sample meanwhile: its row names the same image
            return "duplicate"
        self._enforce(conn)
        return "kept"

    def _enforce(self, conn: Conn) -> None:
        """Remove records past retention, then the oldest while the images exceed max_bytes."""
        before = self._clock() - self._config.retention_s
        expired = conn.execute(
            "SELECT edge_id, sample_id, file FROM field_records WHERE kept_at < ?", (before,)
        ).fetchall()
        self._remove(conn, expired, "retention")
        total = int(conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM field_records").fetchone()[0])
        while total > self._config.max_bytes:  # the oldest, a few at a time (normally one: what the last write added)
            oldest = conn.execute(
                "SELECT edge_id, sample_id, file, bytes FROM field_records ORDER BY kept_at LIMIT ?", (CAP_BATCH,)
            ).fetchall()
            over: list[Any] = []
            for edge_id, sample_id, file, size in oldest:
                over.append((edge_id, sample_id, file))
                total -= int(size)
                if total <= self._config.max_bytes:
                    break
            self._remove(conn, over, "size_cap")
            if not oldest:
                break
        self._metrics.dataset_bytes.set(total)

    def _remove(self, conn: Conn, rows: list[Any], reason: str) -> None:
        if not rows:
            return
        conn.executemany("DELETE FROM field_records WHERE edge_id = ? AND sample_id = ?", [(e, s) for e, s, _ in rows])
        self.images.delete([str(file) for _, _, file in rows])
        self._metrics.dataset_removed.labels(reason).inc(len(rows))


def _connect(path: Path) -> sqlite3.Connection:
    """The dataset's own SQLite index, in WAL mode, with its table."""
    return open_with_tables(path, FIELD_STATEMENTS, "field dataset's index")
