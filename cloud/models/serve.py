"""Serving a published model's file to an edge, for both fronts: gRPC's FetchModel stream and MQTT.

`model_pieces` checks the request against the registry and yields the file's pieces from the asked
offset, the signed manifest in the first; a request that cannot be served raises `ServeRefusedError` with
the gRPC status code the call ends with (the MQTT bridge sends that code in a ModelChunk, where no
call status exists). Each outcome is counted in edgeglm_cloud_model_fetches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from cloud.metrics import CloudMetrics
from cloud.models.registry import ModelRegistry, RegistryError, read_pieces
from protos import session_pb2

logger = logging.getLogger(__name__)


class ServeRefusedError(Exception):
    """A fetch the cloud cannot serve: `code` is the gRPC status the call ends with, the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


async def model_pieces(
    registry: ModelRegistry | None,
    request: session_pb2.FetchModelRequest,
    metrics: CloudMetrics,
    piece_bytes: int,
    transport: str = "grpc",
) -> AsyncIterator[session_pb2.ModelChunk]:
    """The pieces of the model `request` names from its offset on; ServeRefusedError before the first if none."""
    if registry is None:
        metrics.model_fetches.labels("no_registry").inc()
        raise ServeRefusedError(
            grpc.StatusCode.FAILED_PRECONDITION, "this cloud publishes no models (models.registry is unset)"
        )
    try:
        published = await asyncio.to_thread(registry.get, request.name, request.version)
    except RegistryError as err:
        metrics.model_fetches.labels("not_found").inc()
        raise ServeRefusedError(grpc.StatusCode.NOT_FOUND, str(err)) from err
    size = published.manifest.size_bytes
    if request.offset > size:
        metrics.model_fetches.labels("out_of_range").inc()
        raise ServeRefusedError(
            grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} is past the end of the {size}-byte model"
        )
    metrics.model_fetches.labels("resumed" if request.offset else "served").inc()
    logger.info(
        "edge %s fetches model %s %s over %s from byte %d of %d",
        request.edge_id,
        request.name,
        request.version,
        transport,
        request.offset,
        size,
    )
    manifest = published.signed.to_bytes()
    try:
        async for offset, data in read_pieces(published.path, request.offset, size, piece_bytes):
            yield session_pb2.ModelChunk(
                manifest=manifest, offset=offset, data=data, total_size=size, request_id=request.request_id
            )
            metrics.model_bytes_served.inc(len(data))
            manifest = b""
    except (asyncio.CancelledError, GeneratorExit):
        metrics.model_fetches.labels("cut").inc()
        raise
