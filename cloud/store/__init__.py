"""The cloud's durable state: verdicts by sample_id (deduplication) in SQLite (WAL)."""

from cloud.store.verdicts import StoreError, VerdictStore

__all__ = ["StoreError", "VerdictStore"]
