"""grpc.health.v1.Health on the gRPC port, as tensorflow_model_server's --enable_grpc_healthcheck_service.

TF Serving (model_servers/server.cc, the same in 2.15.1, 2.19.0 and 2.20.0) turns on gRPC's
default health service and, once the server is built, marks "ModelService" and "PredictionService"
SERVING; gRPC's default service has "" (the whole server) SERVING from the start, answers
NOT_FOUND for any other name, and NOT_SERVING for all once the server shuts down. The server is
built only after ServerCore has loaded every configured model (it blocks until each has a version
AVAILABLE), so SERVING means "the initial models are AVAILABLE", and nothing revises it later.

Here the statuses are set from the core's model states at the same moment (the embedded server
also starts gRPC only once `start_models` returned), so the answers are the same. Kubernetes'
`grpc` probe asks `Check` with the probe's `service` ("" unless set).
"""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .core import ServerCore

# The names TF Serving registers: "" is gRPC's own entry for the whole server.
SERVICES = ("", "ModelService", "PredictionService")


def serving_status(core: ServerCore) -> int:
    """SERVING when every configured model has a version AVAILABLE (so with none, as TF Serving), else NOT_SERVING."""
    ready = all(model.available() for model in list(core.models.values()) if not model.removed)
    return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING


async def add_health_service_aio(server, core: ServerCore) -> health.aio.HealthServicer:
    """Register the health service on the grpc.aio.Server (before it starts), statuses as TF Serving sets them.

    Check runs on the event loop, never behind predictions: a liveness probe is answered under any load.
    """
    servicer = health.aio.HealthServicer()
    status = serving_status(core)
    for service in SERVICES:
        await servicer.set(service, status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
