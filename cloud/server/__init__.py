"""The cloud's gRPC front: Session streams, Infer, GetPolicy and the health service."""

from cloud.server.fleet import EdgeRecord, FleetStatus
from cloud.server.grpc_server import build_health_server, build_server, server_options
from cloud.server.health import SERVICE_NAME, Health
from cloud.server.servicer import EdgeGLMServicer
from cloud.server.session import EdgeSession, SessionDeps

__all__ = [
    "SERVICE_NAME",
    "EdgeGLMServicer",
    "EdgeRecord",
    "EdgeSession",
    "FleetStatus",
    "Health",
    "SessionDeps",
    "build_health_server",
    "build_server",
    "server_options",
]
