"""How the ingest core answers a sample it cannot judge now (ingest: in cloud.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class IngestConfig(BaseModel):
    """Back-pressure and retry hints the cloud gives the edges (in a deferring Ack's retry_after_ms)."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_decodes: int = Field(
        2,
        ge=1,
        le=64,
        description="Samples decoded at once (a 40 MP image is 120 MB decoded): what memory a burst of large "
        "images may take is bounded by this times the largest accepted image.",
    )
    overloaded_retry_after_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description="The batcher is full: the edge keeps the sample and sends it (and anything new) again after this.",
    )
    failed_retry_after_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Judging failed (timeout, backend or store error): the edge sends the sample again after this.",
    )
    claim_lease_s: float = Field(
        15.0,
        ge=1.0,
        le=3600,
        description="Replicas on one database (store.kind postgres): how long a replica's claim to judge a sample "
        "holds unless renewed; the replica renews its claims every third of it while it judges them, so a judgement "
        "may take longer, and a dead replica's samples free up within this time.",
    )
    claim_poll_s: float = Field(
        0.25,
        gt=0,
        le=60,
        description="A resend reached a replica while another judges it: how often this one looks for the verdict.",
    )
    shutting_down_retry_after_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description="This replica is stopping: the edge sends the sample again after this (to another replica).",
    )
