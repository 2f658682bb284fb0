"""The health service's statuses come from the core's model states, on a grpc.aio.Server as the embedded
server registers it (`add_health_service_aio`).

Real gRPC servers on loopback and a real ServerCore; the served-model case is in the conformance suite.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pt2tf_serve.core import Model, ServerCore
from pt2tf_serve.health import SERVICES, add_health_service_aio
from tensorflow_serving.config import model_server_config_pb2

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def core_with(models: list[str]) -> ServerCore:
    core = ServerCore(tf.compat.v1.ConfigProto(), ["serve"], None, False, 0, 0.0, None)
    for name in models:  # configured, no version AVAILABLE yet
        core.models[name] = Model(model_server_config_pb2.ModelConfig(name=name, base_path=f"/models/{name}"))
    return core


def statuses(target: str) -> dict[str, object]:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answers = {}
        for service in (*SERVICES, "tensorflow.serving.PredictionService"):
            try:
                answers[service] = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            except grpc.RpcError as error:
                answers[service] = error.code()
        return answers


def expected(status) -> dict[str, object]:
    return {**dict.fromkeys(SERVICES, status), "tensorflow.serving.PredictionService": grpc.StatusCode.NOT_FOUND}


@pytest.mark.parametrize(("models", "status"), [([], SERVING), (["resnet18"], NOT_SERVING)], ids=["none", "loading"])
def test_aio_server(models, status):
    async def scenario():
        server = grpc.aio.server()
        await add_health_service_aio(server, core_with(models))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, statuses, f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) == expected(status)
