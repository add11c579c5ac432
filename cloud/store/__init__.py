"""The cloud's durable state in SQLite (WAL) or PostgreSQL: verdicts by (edge_id, sample_id) (deduplication)
with their samples' metadata and thumbnails, the policy history and edge snapshots, behind the
`VerdictRepository` interface.
"""

from cloud.store.base import MAX_PAGE, MAX_PAGE_BYTES, VerdictRepository
from cloud.store.queries import CursorError
from cloud.store.records import (
    DecisionPoint,
    EdgeDetectionSummary,
    EdgeSnapshot,
    PolicyRecord,
    SampleMeta,
    TokenRecord,
    UplinkPoint,
    VerdictFilter,
    VerdictPage,
    VerdictRecord,
)
from cloud.store.sqlite import StoreError
from cloud.store.thumbnails import make_thumbnail
from cloud.store.verdicts import VerdictStore

__all__ = [
    "MAX_PAGE",
    "MAX_PAGE_BYTES",
    "CursorError",
    "DecisionPoint",
    "EdgeDetectionSummary",
    "EdgeSnapshot",
    "PolicyRecord",
    "SampleMeta",
    "StoreError",
    "TokenRecord",
    "UplinkPoint",
    "VerdictFilter",
    "VerdictPage",
    "VerdictRecord",
    "VerdictRepository",
    "VerdictStore",
    "make_thumbnail",
]
