"""The link profile of one edge: rate, delay, jitter, loss and outage windows (the scenario YAML's `link:`)."""

from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict, Field, model_validator

# One TCP segment's payload on a 1500-byte Ethernet MTU with timestamps: the proxy's unit of loss.
SEGMENT_BYTES = 1448
# Smallest token-bucket depth: a couple of full frames, below which a shaper cannot pass one packet.
MIN_BURST_BITS = 2 * 1514 * 8
# Default depth as time at the configured rate.
DEFAULT_BURST_S = 0.02


class Outage(BaseModel):
    """A window during which the link forwards nothing, in seconds from the link clock's start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_s: float = Field(ge=0.0, le=7 * 24 * 3600.0, description="window start, seconds after start_clock()")
    duration_s: float = Field(gt=0.0, le=7 * 24 * 3600.0, description="window length in seconds")

    @property
    def end_s(self) -> float:
        """Window end, seconds after start_clock()."""
        return self.start_s + self.duration_s


class LinkProfile(BaseModel):
    """How one edge's link to the cloud behaves; the same profile drives the inproc and netns modes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    up_kbit: float | None = Field(
        default=None, gt=0.0, le=10_000_000.0, description="edge -> cloud rate in kbit/s (1000 bit/s); None: unlimited"
    )
    down_kbit: float | None = Field(
        default=None, gt=0.0, le=10_000_000.0, description="cloud -> edge rate in kbit/s; None: unlimited"
    )
    rtt_ms: float = Field(default=0.0, ge=0.0, le=10_000.0, description="added round-trip time, half each way")
    jitter_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=10_000.0,
        description="extra one-way delay drawn uniformly in [0, jitter] per segment; bytes are never reordered",
    )
    loss: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="fraction of segments (packets in netns mode) lost; TCP retransmits them after an RTO",
    )
    burst_kbit: float | None = Field(
        default=None,
        gt=0.0,
        le=10_000_000.0,
        description="token-bucket depth in kbit; None: 20 ms at the rate, at least two full frames",
    )
    outages: list[Outage] = Field(default_factory=list, description="windows with no forwarding in either direction")

    @model_validator(mode="after")
    def _outages_do_not_overlap(self) -> LinkProfile:
        ordered = sorted(self.outages, key=lambda o: o.start_s)
        for before, after in itertools.pairwise(ordered):
            if after.start_s < before.end_s:
                raise ValueError(
                    f"outages overlap: [{before.start_s}, {before.end_s}) and [{after.start_s}, {after.end_s});"
                    " merge them into one window"
                )
        return self

    def burst_bits(self, rate_kbit: float) -> float:
        """Token-bucket depth in bits for a direction running at `rate_kbit`."""
        if self.burst_kbit is not None:
            return max(self.burst_kbit * 1000.0, MIN_BURST_BITS)
        return max(rate_kbit * 1000.0 * DEFAULT_BURST_S, MIN_BURST_BITS)

    @property
    def retransmit_s(self) -> float:
        """The delay a lost segment costs: TCP's RTO, max(200 ms, rtt + 4 * jitter)."""
        return max(0.2, (self.rtt_ms + 4.0 * self.jitter_ms) / 1000.0)
