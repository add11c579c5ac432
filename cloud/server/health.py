"""The standard grpc.health.v1 service: NOT_SERVING until the backend is loaded, and again on shutdown."""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

SERVICE_NAME = "edgeglm.v1.EdgeGLM"
_SERVICES = ("", SERVICE_NAME)


class Health:
    """Holds the health servicer; the overall status ("") and the EdgeGLM service's move together."""

    def __init__(self) -> None:
        """Start NOT_SERVING: nothing is ready before the backend is loaded."""
        self.servicer = HealthServicer()
        self._servicer_status = self.servicer._server_status
        for service in _SERVICES:
            self._servicer_status[service] = health_pb2.HealthCheckResponse.NOT_SERVING

    async def serving(self) -> None:
        """Report SERVING (the backend is loaded and the server accepts calls)."""
        for service in _SERVICES:
            await self.servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> None:
        """Report NOT_SERVING (a part the service cannot work without has died)."""
        for service in _SERVICES:
            await self.servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def shutting_down(self) -> None:
        """Report NOT_SERVING from now on, for good."""
        await self.servicer.enter_graceful_shutdown()

    def status(self, service: str = "") -> str:
        """The current status name of a service, e.g. "SERVING"."""
        value = self._servicer_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(value))
