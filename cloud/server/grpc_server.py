"""The grpc.aio server: options from config, the EdgeGLM service and the standard health service.

An oversized message (above server.max_receive_message_bytes) is refused by gRPC core with
RESOURCE_EXHAUSTED ("Received message larger than max") before any Python code sees it: for a unary
call the handler never runs, and on a Session stream the request iterator just ends, exactly as if
the edge had closed its side. Nothing in the servicer or in an interceptor can tell that case
apart, so bad_messages{reason="oversized"} is not counted by this server: the status the client
sees is the signal (the edge logs it and counts the failed session). The server goes on serving.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from cloud.config import ServerConfig
from cloud.server.health import SERVICE_NAME, Health
from cloud.server.servicer import EdgeGLMServicer
from protos import session_pb2_grpc

logger = logging.getLogger(__name__)


def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    """gRPC channel arguments of the server, every one from config."""
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        ("grpc.max_send_message_length", config.max_send_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", config.max_pings_without_data),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
    ]


def build_server(config: ServerConfig, servicer: EdgeGLMServicer, health: Health) -> tuple[grpc.aio.Server, int]:
    """A server with both services, bound to host:port (port 0: a free one); returns it and the port."""
    server = grpc.aio.server(options=server_options(config))
    session_pb2_grpc.add_EdgeGLMServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    address = f"{config.host}:{config.port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"server.host/port: cannot listen on {address} (in use, or not an address of this host)")
    return server, port


__all__ = ["SERVICE_NAME", "build_server", "server_options"]
