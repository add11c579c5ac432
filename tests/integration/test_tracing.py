"""Traces end to end: a real edge agent and a real cloud service, each with its own tracer provider,
export the spans of every sample they handle; each sample's spans form one trace under its own
trace id, rooted at the edge's decision. And the OTLP exporter really delivers them to a collector
(a gRPC server speaking OpenTelemetry's TraceService, on a free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cloud.service import CloudService
from common.tracing import Tracing, TracingConfig, make_provider, root_span_id, setup_tracing
from edge.agent import EdgeAgent
from tests.helpers.agents import WATCH_ALL, cloud_config, edge_config, make_agent_clip
from tests.helpers.broker import free_port
from tests.helpers.wait import wait_until

WAIT_S = 60.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_agent_clip(tmp_path_factory.mktemp("clip"))


async def test_each_sample_is_one_trace_from_the_edge_decision_to_the_verdict_back(tmp_path: Path, clip: Path) -> None:
    edge_spans, cloud_spans = InMemorySpanExporter(), InMemorySpanExporter()
    on = TracingConfig(enabled=True)
    service = CloudService(
        cloud_config(tmp_path, clip, WATCH_ALL), tracing=Tracing(make_provider(on, "edgeglm-cloud", cloud_spans))
    )
    await service.start()
    try:
        agent = EdgeAgent(
            edge_config(tmp_path, clip, service.port, "gw-0"),
            tracing=Tracing(make_provider(on, "edgeglm-edge", edge_spans)),
        )
        await asyncio.wait_for(agent.run(asyncio.Event()), timeout=WAIT_S)
    finally:
        await service.stop()
    summary = json.loads((tmp_path / "gw-0" / "summary.json").read_text())
    assert summary["samples_sent"] > 0 and summary["verdicts"] == summary["samples_sent"]

    traces: dict[int, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for span in [*edge_spans.get_finished_spans(), *cloud_spans.get_finished_spans()]:
        traces[span.context.trace_id][span.name].append(span)
    assert len(traces) == summary["samples_sent"], "one trace per sample sent"
    for trace_id, spans in traces.items():
        assert {name: len(found) for name, found in spans.items()} == {
            "edge.sample": 1,
            "cloud.judge": 1,
            "cloud.queue": 1,
            "cloud.backend": 1,
            "cloud.store": 1,
            "edge.round_trip": 1,
        }, f"trace {trace_id:032x}"
        (root,) = spans["edge.sample"]
        (judge,) = spans["cloud.judge"]
        assert root.parent is None and root.context.span_id == root_span_id(trace_id)
        assert judge.parent.span_id == root.context.span_id and judge.parent.is_remote
        assert spans["edge.round_trip"][0].parent.span_id == root.context.span_id
        for child in ("cloud.queue", "cloud.backend", "cloud.store"):
            (span,) = spans[child]
            assert span.parent.span_id == judge.context.span_id
            assert judge.start_time <= span.start_time <= span.end_time <= judge.end_time
        sample_id = root.attributes["edgeglm.sample_id"]
        assert judge.attributes["edgeglm.sample_id"] == sample_id and judge.attributes["edgeglm.edge_id"] == "gw-0"
        assert root.resource.attributes["service.name"] == "edgeglm-edge"
        assert judge.resource.attributes["service.name"] == "edgeglm-cloud"
        assert root.start_time <= root.end_time <= judge.start_time


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OpenTelemetry collector's trace endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.services: set[str] = set()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                self.names += [span.name for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def collector() -> Any:
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(0)


async def test_spans_reach_an_otlp_collector_and_tracing_is_off_by_default() -> None:
    assert not setup_tracing(TracingConfig(), "edgeglm-cloud").enabled
    with collector() as (port, received):
        tracing = setup_tracing(TracingConfig(enabled=True, endpoint=f"127.0.0.1:{port}"), "edgeglm-cloud")
        trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736"
        tracing.root(trace_hex, "edge.sample", 1_000, 2_000, {"edgeglm.sample_id": "s-1"})
        tracing.span(trace_hex, "cloud.judge", 3_000, 4_000, {})
        tracing.shutdown()  # flushes the batch
        await wait_until(lambda: len(received.names) >= 2, "the collector got the spans", timeout_s=WAIT_S)
    assert sorted(received.names) == ["cloud.judge", "edge.sample"]
    assert received.services == {"edgeglm-cloud"}


def test_a_trace_id_that_is_not_32_hex_digits_traces_nothing() -> None:
    spans = InMemorySpanExporter()
    tracing = Tracing(make_provider(TracingConfig(enabled=True), "edgeglm-cloud", spans))
    for bad in ("", "xyz", "0" * 32, "g" * 32):
        tracing.root(bad, "edge.sample", 1, 2, {})
        tracing.span(bad, "cloud.judge", 1, 2, {})
    assert spans.get_finished_spans() == ()
