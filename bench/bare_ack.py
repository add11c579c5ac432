"""The gRPC stack's own limit: a grpc.aio server that answers each sample with an Ack and a Verdict at once.

`python -m bench.bare_ack --port N` serves the EdgeGLM Session method and nothing else: it parses
each EdgeMessage (the least any server must do to know the sample's id), and writes back an accepted
Ack and an UNSURE verdict of origin BACKEND, without decoding the image, batching, judging or storing.
`bench.fleet` runs the same light fleet against it and against the real cloud: the ratio of their
ingest rates says how much of this machine's ceiling is the cloud's own work and how much is gRPC,
protobuf and the fleet simulator itself.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
import grpc.aio
import typer

from protos import session_pb2, verdict_pb2

SESSION = "/edgeglm.v1.EdgeGLM/Session"


async def session(requests: AsyncIterator[session_pb2.EdgeMessage], _: Any) -> AsyncIterator[session_pb2.CloudMessage]:
    """Ack and answer every sample of one stream."""
    edge_id = ""
    async for message in requests:
        kind = message.WhichOneof("kind")
        if kind == "hello":
            edge_id = message.hello.edge_id
        elif kind == "sample":
            sample_id = message.sample.sample_id
            yield session_pb2.CloudMessage(ack=session_pb2.Ack(sample_id=sample_id, accepted=True))
            yield session_pb2.CloudMessage(
                verdict=verdict_pb2.Verdict(
                    sample_id=sample_id,
                    edge_id=edge_id,
                    decision=verdict_pb2.DECISION_UNSURE,
                    origin=verdict_pb2.VERDICT_ORIGIN_BACKEND,
                    backend="bare",
                )
            )


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:`port` until SIGTERM."""
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000)])
    handler = grpc.stream_stream_rpc_method_handler(
        session,
        request_deserializer=session_pb2.EdgeMessage.FromString,
        response_serializer=session_pb2.CloudMessage.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("edgeglm.v1.EdgeGLM", {"Session": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main(port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")]) -> None:
    """Serve the bare Session method."""
    asyncio.run(serve(port))


if __name__ == "__main__":
    typer.run(main)
