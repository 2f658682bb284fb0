"""The gRPC door: PredictionService and ModelService from tensorflow-serving-api's own stubs.

Thin, as TF Serving's prediction_service_impl and model_service_impl: each call resolves its
model spec on the core and runs the shared predict path; errors keep TF Serving's codes.

The server is grpc.aio's: a call waiting for its batch is a suspended coroutine, not a thread,
so callers beyond what the queue holds are refused at enqueue time however many they are, and
a call whose client cancels or disconnects is cancelled and leaves the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc._cython.cygrpc import ExecuteBatchError
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from .core import ServerCore
from .health import add_health_service_aio
from .metrics import Metrics
from .predict import Predictor, check_example_signature, find_signature
from .protocol import from_tensor_proto, model_metadata, model_spec, model_status, tensor_proto
from .status import ServingError

MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving: SetMaxMessageSize(INT32_MAX), both directions
MAX_ERROR_CHARS = 1024


async def _abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    message = error.message
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "...TRUNCATED"
    try:
        await context.abort(error.grpc_code, message)
    except ExecuteBatchError:
        # The caller left (deadline passed, cancelled, disconnected) before grpc's core told the
        # servicer: the status cannot be sent. grpc.aio logs this as a servicer error with a
        # traceback unless it has already seen the client close; a cancelled handler is what this
        # is, and grpc.aio ends one quietly.
        raise asyncio.CancelledError(f"the caller left before its {error.code} could be sent") from None


def _spec_parts(request) -> tuple[str, int | None, str | None]:
    if not request.HasField("model_spec"):
        raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore, predictor: Predictor, metrics: Metrics, tensor_content: bool):
        self.core = core
        self.predictor = predictor
        self.metrics = metrics
        self.tensor_content = tensor_content

    async def _counted(self, api: str, request, context, work: Callable[[], Awaitable]):
        started = time.monotonic()
        name = request.model_spec.name if request.HasField("model_spec") else ""
        try:
            response = await work()
        except ServingError as error:
            self.metrics.request(name, error.code, api, "GRPC", time.monotonic() - started)
            await _abort(context, error)
        self.metrics.request(name, "OK", api, "GRPC", time.monotonic() - started)
        return response

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        async def work():
            # None without a deadline; as TF Serving's DeadlineToTimeoutMillis, measured on arrival.
            remaining = context.time_remaining()
            name, version, label = _spec_parts(request)
            with self.core.hold(name, version, label) as held:
                signature = find_signature(held.servable, request.model_spec.signature_name, rest=False)
                inputs = {alias: from_tensor_proto(proto, alias) for alias, proto in request.inputs.items()}
                output_filter = list(request.output_filter)
                prediction = await self.predictor.run(held, signature, inputs, output_filter, remaining)
            response = predict_pb2.PredictResponse(model_spec=model_spec(name, held.number, signature.name))
            for alias, array in prediction.outputs.items():
                response.outputs[alias].CopyFrom(tensor_proto(array, self.tensor_content))
            return response

        return await self._counted("Predict", request, context, work)

    async def _examples(self, api: str, method: str, request, context):
        async def work():
            name, version, label = _spec_parts(request)
            with self.core.hold(name, version, label) as held:
                check_example_signature(held, request.model_spec.signature_name, method)

        return await self._counted(api, request, context, work)

    async def Classify(self, request, context):
        return await self._examples("Classify", "classify", request, context)

    async def Regress(self, request, context):
        return await self._examples("Regress", "regress", request, context)

    async def MultiInference(self, request, context):
        started = time.monotonic()
        name = request.tasks[0].model_spec.name if request.tasks else ""
        try:
            names = {task.model_spec.name for task in request.tasks}
            if "" in names:
                raise ServingError("INVALID_ARGUMENT", "Found ModelSpec with an empty model name.")
            if len(names) > 1:
                raise ServingError(
                    "INVALID_ARGUMENT", "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            seen = set()
            for task in request.tasks:
                signature = task.model_spec.signature_name or "serving_default"
                if signature in seen:
                    raise ServingError("INVALID_ARGUMENT", f"Duplicate evaluation of signature: {signature}")
                seen.add(signature)
                _, version, label = _spec_parts(task)
                with self.core.hold(name, version, label) as held:
                    if signature not in held.servable.signature_defs:
                        raise ServingError(
                            "INVALID_ARGUMENT", f"Requested signature not found in model graph: {signature}"
                        )
                    method = task.method_name.rsplit("/", 1)[-1]
                    if method not in ("classify", "regress"):
                        raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}")
                    check_example_signature(held, signature, method)
            raise ServingError("INVALID_ARGUMENT", "Input is empty.")
        except ServingError as error:
            self.metrics.request(name, error.code, "MultiInference", "GRPC", time.monotonic() - started)
            await _abort(context, error)

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        try:
            name, version, label = _spec_parts(request)
            with self.core.hold(name, version, label) as held:
                return model_metadata(held, list(request.metadata_field))
        except ServingError as error:
            await _abort(context, error)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore, reload: Callable):
        self.core = core
        self.reload = reload

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        try:
            name, version, _ = _spec_parts(request)  # a label is ignored, as TF Serving does
            return model_status(self.core.status(name, version))
        except ServingError as error:
            await _abort(context, error)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                    "currently supported",
                )
            # Loading blocks for seconds: off the event loop, which keeps serving meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, self.reload, request.config)
        except ServingError as error:
            await _abort(context, error)
        return model_management_pb2.ReloadConfigResponse()


def add_services(
    server: grpc.aio.Server,
    core: ServerCore,
    predictor: Predictor,
    metrics: Metrics,
    reload: Callable,
    tensor_content: bool,
) -> None:
    """Register every gRPC service the server offers; each servicer's methods are coroutines (grpc.aio)."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, predictor, metrics, tensor_content), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, reload), server)


async def start_grpc(
    core: ServerCore,
    predictor: Predictor,
    metrics: Metrics,
    reload: Callable,
    address: str,
    tensor_content: bool,
    health_check: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on `address` in the running event loop; returns it and the bound port."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    add_services(server, core, predictor, metrics, reload, tensor_content)
    if health_check:  # --enable_grpc_healthcheck_service; Check runs on the event loop, apart from predictions
        await add_health_service_aio(server, core)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}: the port is taken or the address is not local")
    await server.start()
    return server, port
