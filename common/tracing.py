"""OpenTelemetry traces of a sample's life, on the edge and in the cloud, joined by the sample's trace id.

Every sample already carries a `trace_id` (32 hex digits, made by the edge when it decides to ask).
It becomes the OpenTelemetry trace id on both sides, so one trace shows a sample from the edge's
decision to the verdict back at the edge, with nothing propagated but the field the sample has:

- `edge.sample`, the trace's root: from the frame's capture to the sample durable in the outbox.
  Its span id is derived from the trace id (`root_span_id`), so the cloud's spans can name it as
  their parent without hearing from the edge;
- `cloud.judge` (the sample admitted until its verdict is stored), with `cloud.queue` (in the
  batcher), `cloud.backend` (inference) and `cloud.store` (the durable write) under it;
- `edge.round_trip`: the last send of the sample until its verdict came back.

Spans are recorded when their work is over, with the times it took (the batcher reports queue and
inference milliseconds after the fact), so tracing adds no code to the paths it measures. Sampling
is by trace id (`TraceIdRatioBased`): edge and cloud keep or drop the same samples.

Export is OTLP over gRPC to a collector (`tracing.endpoint`), off by default; without it the
`Tracing` object is a no-op. Tests give a provider of their own (the SDK's in-memory exporter).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)
Attributes = Mapping[str, str | int | float | bool]
_FORCED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("edgeglm_forced_ids", default=None)


class TracingConfig(BaseModel):
    """OpenTelemetry export of sample traces (tracing: in edge.yaml and cloud.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Export a trace per sample over OTLP/gRPC.")
    endpoint: str = Field("localhost:4317", min_length=3, description="host:port of the OpenTelemetry collector.")
    insecure: bool = Field(True, description="Plain gRPC to the collector (a sidecar or node-local one).")
    sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of samples traced, decided by trace id (the same on edge and cloud)."
    )
    service_name: str = Field("", description="service.name of the spans; empty: edgeglm-edge or edgeglm-cloud.")


def trace_id_of(trace_hex: str) -> int | None:
    """The OpenTelemetry trace id of a sample's trace id; None when it is not 32 hex digits (or zero)."""
    if len(trace_hex) != 32:
        return None
    try:
        value = int(trace_hex, 16)
    except ValueError:
        return None
    return value or None


def root_span_id(trace_id: int) -> int:
    """The span id of a trace's `edge.sample` root: its trace id folded to 64 bits (never 0)."""
    return ((trace_id >> 64) ^ (trace_id & 0xFFFF_FFFF_FFFF_FFFF)) or 1


class Tracing:
    """Records the spans of samples; a no-op without a tracer provider."""

    def __init__(self, provider: Any | None = None) -> None:
        """`provider`: an SDK TracerProvider made by `setup_tracing` (or a test's); None: trace nothing."""
        self._provider = provider
        self._tracer = provider.get_tracer("edgeglm") if provider is not None else None

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded."""
        return self._tracer is not None

    def root(self, trace_hex: str, name: str, start_ns: int, end_ns: int, attributes: Attributes) -> None:
        """The trace's root span (the edge's), with the ids derived from the sample's trace id."""
        trace_id = trace_id_of(trace_hex) if self._tracer is not None else None
        if self._tracer is None or trace_id is None:
            return
        from opentelemetry.context import Context

        token = _FORCED.set((trace_id, root_span_id(trace_id)))
        try:
            span = self._tracer.start_span(name, context=Context(), start_time=start_ns, attributes=dict(attributes))
        finally:
            _FORCED.reset(token)
        span.end(end_time=end_ns)

    def span(
        self,
        trace_hex: str,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Attributes,
        parent: Any | None = None,
    ) -> Any | None:
        """A finished span under `parent` (a span this returned), else under the trace's root; returns it."""
        trace_id = trace_id_of(trace_hex) if self._tracer is not None else None
        if self._tracer is None or trace_id is None:
            return None
        from opentelemetry import trace

        if parent is None:
            parent_context = trace.SpanContext(
                trace_id, root_span_id(trace_id), is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
            )
        else:
            parent_context = parent.get_span_context()
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent_context))
        span = self._tracer.start_span(name, context=context, start_time=start_ns, attributes=dict(attributes))
        span.end(end_time=end_ns)
        return span

    def shutdown(self) -> None:
        """Export what is pending and stop (the process is ending)."""
        if self._provider is not None:
            self._provider.shutdown()


def make_provider(config: TracingConfig, service: str, exporter: Any | None = None) -> Any:
    """An SDK TracerProvider with edgeglm's ids and sampling, exporting to `exporter` (default: OTLP/gRPC)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    class SampleIds(RandomIdGenerator):
        """Random ids, except for a sample's root span: its trace id and the span id derived from it."""

        def generate_trace_id(self) -> int:
            forced = _FORCED.get()
            return forced[0] if forced is not None else super().generate_trace_id()

        def generate_span_id(self) -> int:
            forced = _FORCED.get()
            return forced[1] if forced is not None else super().generate_span_id()

    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name or service}),
        sampler=TraceIdRatioBased(config.sample_ratio),
        id_generator=SampleIds(),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint, insecure=config.insecure))
        )
    return provider


def setup_tracing(config: TracingConfig, service: str) -> Tracing:
    """The process's Tracing from its config: OTLP export when enabled (logged), else a no-op."""
    if not config.enabled:
        return Tracing()
    logger.info("tracing: spans of %.0f%% of samples to %s (OTLP/gRPC)", config.sample_ratio * 100, config.endpoint)
    return Tracing(make_provider(config, service))
