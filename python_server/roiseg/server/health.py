"""The standard gRPC health service of a roiseg server, which balancing clients watch: SERVING
for the whole server ("") and the roiseg service while it takes calls, NOT_SERVING once it
drains before stopping, so that clients send their next calls to other servers."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

#: The health service's own name, for reflection.
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class Health:
    """The health statuses of one server's services."""

    def __init__(self, service_names: tuple[str, ...]) -> None:
        self._servicer = health.HealthServicer()
        for name in ("", *service_names):
            self._servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    def add_to(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def drain(self) -> None:
        """Reports NOT_SERVING for every service from now on (calls are still answered)."""
        self._servicer.enter_graceful_shutdown()
