"""The grpc.aio server: options from config, the EdgeGLM service and the standard health service.

A message above server.max_receive_message_bytes is refused by our deserializer (`lenient`) before
it is parsed: a unary call gets RESOURCE_EXHAUSTED, a Session stream a SessionError and goes on, and
bad_messages{reason="oversized"} counts it. gRPC core's own limit is set to twice the configured one
(`hard_receive_limit`): a message above *that* is cut by gRPC core with RESOURCE_EXHAUSTED before any
Python code sees it (the unary handler never runs; a Session's request iterator just ends, as if the
edge had closed its side), and is not counted. The server goes on serving either way.

A message protobuf cannot parse (a truncated varint, invalid UTF-8 in a string) is another matter:
the generated registration's deserializer would raise inside gRPC, which answers INTERNAL and logs
a traceback without counting anything. The EdgeGLM service is registered here instead with a
deserializer that hands the servicer an `Undecodable` in its place, so the servicer answers
INVALID_ARGUMENT (a unary call) or an error message on the stream (a Session, which goes on), and
counts it as bad_messages{reason="undecodable"}.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from cloud.config import ServerConfig
from cloud.server.health import SERVICE_NAME, Health
from cloud.server.servicer import EdgeGLMServicer
from cloud.server.wire import lenient
from common.tls import ServerTlsConfig, TlsError, files_stamp, read_pem
from protos import policy_pb2, session_pb2, verdict_pb2

logger = logging.getLogger(__name__)
SERVICE = "edgeglm.v1.EdgeGLM"  # as protos/session.proto names it (package edgeglm.v1)


def hard_receive_limit(limit: int) -> int:
    """gRPC core's own message limit for a configured one: twice it, within gRPC's 2 GiB."""
    return min(2 * limit + (64 << 10), (1 << 31) - 1)


def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    """gRPC channel arguments of the server, every one from config."""
    return [
        # gRPC core cuts what is above its limit before Python sees it, uncounted; it gets twice the
        # configured one, so that what lies between is refused by our deserializer: counted, answered,
        # and a Session goes on (see `lenient`).
        ("grpc.max_receive_message_length", hard_receive_limit(config.max_receive_message_bytes)),
        ("grpc.max_send_message_length", config.max_send_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", config.max_pings_without_data),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        *(
            []
            if config.max_connection_age_s is None
            else [
                ("grpc.max_connection_age_ms", round(config.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", round(config.max_connection_age_grace_s * 1000)),
            ]
        ),
    ]


def build_server(config: ServerConfig, servicer: EdgeGLMServicer, health: Health) -> tuple[grpc.aio.Server, int]:
    """A server with both services, bound to host:port (port 0: a free one); returns it and the port."""
    server = grpc.aio.server(options=server_options(config))
    handlers = {
        "Session": grpc.stream_stream_rpc_method_handler(
            servicer.Session,
            request_deserializer=lenient(session_pb2.EdgeMessage, config.max_receive_message_bytes),
            response_serializer=session_pb2.CloudMessage.SerializeToString,
        ),
        "Infer": grpc.unary_unary_rpc_method_handler(
            servicer.Infer,
            request_deserializer=lenient(session_pb2.InferRequest, config.max_receive_message_bytes),
            response_serializer=verdict_pb2.Verdict.SerializeToString,
        ),
        "GetPolicy": grpc.unary_unary_rpc_method_handler(
            servicer.GetPolicy,
            request_deserializer=lenient(session_pb2.GetPolicyRequest, config.max_receive_message_bytes),
            response_serializer=policy_pb2.SignedPolicy.SerializeToString,
        ),
        "FetchModel": grpc.unary_stream_rpc_method_handler(
            servicer.FetchModel,
            request_deserializer=lenient(session_pb2.FetchModelRequest, config.max_receive_message_bytes),
            response_serializer=session_pb2.ModelChunk.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    address = f"{config.host}:{config.port}"
    if config.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(config.tls))
    if port == 0:
        raise OSError(f"server.host/port: cannot listen on {address} (in use, or not an address of this host)")
    return server, port


__all__ = ["SERVICE_NAME", "build_health_server", "build_server", "server_options"]


def build_health_server(config: ServerConfig, health: Health) -> tuple[grpc.aio.Server, int] | None:
    """The plaintext health-only server on `config.health_port` (None when unset): it serves nothing else,
    so probes that cannot speak mutual TLS see the service's health and no client reaches the edges' API."""
    if config.health_port is None:
        return None
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 10)])
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    address = f"{config.host}:{config.health_port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"server.health_port: cannot listen on {address} (in use, or not an address of this host)")
    return server, port


def server_credentials(tls: ServerTlsConfig) -> grpc.ServerCredentials:
    """Mutual TLS credentials that pick up rotated files: each new handshake checks whether the
    certificate, key or client CA changed on disk (a Kubernetes Secret updated in place) and, if they
    did and read as PEM, uses them from then on; connections already open keep theirs."""

    def configuration() -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(read_pem(tls.key_file, "server.tls.key_file"), read_pem(tls.cert_file, "server.tls.cert_file"))],
            root_certificates=read_pem(tls.client_ca_file, "server.tls.client_ca_file"),
        )

    paths = (tls.cert_file, tls.key_file, tls.client_ca_file)
    seen = [files_stamp(*paths)]

    def fetch() -> Any:
        stamp = files_stamp(*paths)
        if stamp == seen[0]:
            return None  # unchanged: keep the configuration in use
        try:
            fresh = configuration()
        except TlsError as err:  # half-written files: try again at the next handshake
            logger.warning("server TLS files changed but cannot be used yet: %s", err)
            return None
        seen[0] = stamp
        logger.info("server TLS certificate reloaded from %s", tls.cert_file)
        return fresh

    return grpc.dynamic_ssl_server_credentials(configuration(), fetch, require_client_authentication=True)
