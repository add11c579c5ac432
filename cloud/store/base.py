"""The store's interface: what the judge, the policy recorder and the admin API need of it.

`VerdictStore` (SQLite) implements it; a PostgreSQL store would implement the same coroutines. Only
plain Python types and the dataclasses of `cloud.store.records` cross it; cursors are opaque strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cloud.store.records import (
    DecisionPoint,
    EdgeSnapshot,
    PolicyRecord,
    SampleMeta,
    TokenRecord,
    UplinkPoint,
    VerdictFilter,
    VerdictPage,
    VerdictRecord,
)

MAX_PAGE = 500
# A page's items as compact JSON, at most (a page always holds one item, whatever its size). With the
# sample limits a record can reach ~0.3 MB (512 edge detections), so 500 of them would be ~150 MB.
MAX_PAGE_BYTES = 4 << 20


class VerdictRepository(Protocol):
    """Verdicts by (edge_id, sample_id) with their samples' metadata, policy history and edge snapshots."""

    async def open(self) -> None:
        """Open (or create, or migrate) the store now."""

    async def close(self) -> None:
        """Finish queued statements and close; again is a no-op."""

    async def get(self, sample_id: str, edge_id: str) -> bytes | None:
        """The serialized Verdict of `edge_id`'s `sample_id`, or None."""

    async def contains(self, sample_id: str, edge_id: str) -> bool:
        """Whether `edge_id`'s `sample_id` was received before."""

    async def put(
        self,
        sample_id: str,
        edge_id: str,
        verdict: bytes,
        *,
        received_at: float | None = None,
        decided_at: float | None = None,
        meta: SampleMeta | None = None,
    ) -> bool:
        """Store a verdict (and the sample's metadata) unless the sample has one; whether it was stored."""

    async def list_verdicts(
        self, where: VerdictFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> VerdictPage:
        """Judged samples matching `where`, newest decided first, `limit` per page after `cursor`."""

    async def get_record(self, sample_id: str, edge_id: str) -> VerdictRecord | None:
        """One judged sample's record, or None."""

    async def get_thumbnail(self, sample_id: str, edge_id: str) -> bytes | None:
        """The sample's thumbnail JPEG, or None when there is none."""

    async def uplink_series(
        self, bucket_s: float, since: float | None = None, until: float | None = None
    ) -> list[UplinkPoint]:
        """Per edge and time bucket (by arrival): samples and their bytes."""

    async def decision_series(
        self, bucket_s: float, since: float | None = None, until: float | None = None
    ) -> list[DecisionPoint]:
        """Per edge and time bucket (by decision time): confirmed, rejected and unsure counts."""

    async def add_policy(self, record: PolicyRecord) -> bool:
        """Keep a published policy version; False when that version is kept already."""

    async def list_policies(self, limit: int = 100, before_version: int | None = None) -> list[PolicyRecord]:
        """Published versions, newest first."""

    async def get_policy(self, version: int) -> PolicyRecord | None:
        """One published version, or None."""

    async def add_token(self, token: TokenRecord) -> bool:
        """Keep an issued API token's record; False when that name is taken."""

    async def list_tokens(self) -> list[TokenRecord]:
        """Every issued API token's record, by name."""

    async def remove_token(self, name: str) -> bool:
        """Forget an issued API token; whether there was one."""

    async def add_edge_snapshots(self, snapshots: Sequence[EdgeSnapshot]) -> None:
        """Keep edges' records as they are now."""

    async def latest_edge_snapshots(self) -> list[EdgeSnapshot]:
        """The newest snapshot of every edge ever kept, by edge id."""
