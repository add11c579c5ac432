"""The field dataset as a YOLO dataset: images/{train,val}, labels/{train,val}, data.yaml, report.json.

Each record's image is copied as it is; its label file holds one line per object the cloud found,
`class cx cy w h` normalised to the image (ultralytics' detection format). A record the cloud found
nothing in (a rejected false alarm) is a background image with an empty label file: it teaches the
edge what not to report. Classes are the ones given (the edge model's, in its order, so a fine-tune
keeps its head) or, by default, every label the records hold, sorted.

Near-identical frames must not land on both sides of the split, or validation measures memory: the
split is by group, a tracked object's records together (edge, camera, track) and untracked ones by
camera and `group_s` window of capture time, each group's side drawn from a hash of its key (the
same records split the same way on every run).

Left out, and counted in the report by reason: a record naming a class not in `classes` (keeping the
image without that object would teach the model it is not there), one whose cloud objects have no
box (an answer that named a label only), one whose image is gone. Images are read from where the
dataset keeps them (a folder or an S3 bucket, `cloud.dataset.images`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.progress import track

from cloud.dataset.images import ImageStore, ImageStoreError
from cloud.dataset.store import FieldRecord

SPLITS = ("train", "val")


@dataclass
class ExportReport:
    """What an export wrote: per split, images, background images, objects per class, groups; what it left out."""

    classes: list[str]
    images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    backgrounds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    objects: dict[str, Counter[str]] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    groups: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    by_edge: Counter[str] = field(default_factory=Counter)
    by_decision: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "classes": self.classes,
            "images": self.images,
            "backgrounds": self.backgrounds,
            "objects": {split: dict(sorted(counts.items())) for split, counts in self.objects.items()},
            "groups": self.groups,
            "by_edge": dict(sorted(self.by_edge.items())),
            "by_decision": dict(sorted(self.by_decision.items())),
            "by_mined_reason": dict(sorted(self.by_reason.items())),
            "left_out": dict(sorted(self.left_out.items())),
        }


def group_of(record: FieldRecord, group_s: float) -> str:
    """The records that must share a side of the split: one tracked object's, or one camera's window of time."""
    if record.track_id:
        return f"{record.edge_id}\0{record.camera_id}\0track\0{record.track_id}"
    return f"{record.edge_id}\0{record.camera_id}\0time\0{int(record.captured_at // group_s)}"


def split_of(group: str, val_share: float) -> str:
    """The side of a group: a hash of its key below `val_share` goes to val."""
    draw = int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2**64
    return "val" if draw < val_share else "train"


def label_lines(record: FieldRecord, classes: Sequence[str]) -> list[str] | str:
    """The record's YOLO label lines, or why it is left out."""
    lines = []
    for item in record.cloud:
        if item.label not in classes:
            return "unknown_class"
        if item.box is None:
            return "no_box"
        x1, y1, x2, y2 = item.box
        cx, cy = (x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height
        w, h = (x2 - x1) / record.width, (y2 - y1) / record.height
        lines.append(f"{classes.index(item.label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def export_yolo(
    records: Sequence[tuple[FieldRecord, str]],
    images: ImageStore,
    out: Path,
    classes: Sequence[str] | None = None,
    val_share: float = 0.2,
    group_s: float = 60.0,
) -> ExportReport:
    """Write `records` (with their images' names in `images`) under `out` as a YOLO dataset; the report is also
    report.json."""
    if not 0.0 <= val_share <= 1.0:
        raise ValueError(f"val_share {val_share} is outside 0..1")
    names = list(classes) if classes else sorted({item.label for record, _ in records for item in record.cloud})
    report = ExportReport(names)
    seen: dict[str, set[str]] = {split: set() for split in SPLITS}
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for record, name in track(records, description="exporting the field dataset"):
        lines = label_lines(record, names)
        if isinstance(lines, str):
            report.left_out[lines] += 1
            continue
        try:
            data = images.get(name)
        except ImageStoreError:
            report.left_out["missing_image"] += 1
            continue
        group = group_of(record, group_s)
        split = split_of(group, val_share)
        stem = Path(name).stem
        (out / "images" / split / f"{stem}.jpg").write_bytes(data)
        (out / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
        report.images[split] += 1
        report.backgrounds[split] += not lines
        report.objects[split].update(item.label for item in record.cloud)
        seen[split].add(group)
        report.by_edge[record.edge_id] += 1
        report.by_decision[record.decision] += 1
        report.by_reason[record.mined_reason] += 1
    report.groups = {split: len(groups) for split, groups in seen.items()}
    layout = {"train": "images/train", "val": "images/val", "names": dict(enumerate(names))}
    (out / "data.yaml").write_text(yaml.safe_dump(layout, sort_keys=False))
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return report
