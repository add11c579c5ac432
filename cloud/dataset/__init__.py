"""The field dataset: every judged sample's image with the cloud's labels, kept as a training record
(`FieldDataset`), and its export as a YOLO dataset (`export_yolo`)."""

from cloud.dataset.config import DatasetConfig
from cloud.dataset.export import ExportReport, export_yolo
from cloud.dataset.store import FieldDataset, FieldRecord

__all__ = ["DatasetConfig", "ExportReport", "FieldDataset", "FieldRecord", "export_yolo"]
