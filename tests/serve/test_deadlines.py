"""Deadlines and callers who leave, as TF Serving handles them: a request whose caller is gone is not run.

TF Serving turns a gRPC deadline into RunOptions.timeout_in_ms (prediction_service_impl.cc,
DeadlineToTimeoutMillis), and REST's `--rest_api_timeout_in_ms` into the same field when it is
positive (http_rest_api_handler.cc); no deadline means no timeout. The batching session answers
a request whose time ran out in the queue with RESOURCE_EXHAUSTED (batching_session.cc). The
embedded server goes one step further, as the issue asks: a queued request whose deadline passes
or whose caller cancels or disconnects leaves its batch, so it takes no slot from the next caller.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import grpc
import numpy as np
import orjson
import pytest
import tensorflow as tf
from grpc._cython.cygrpc import ExecuteBatchError
from pt2tf_serve.client import RestClient
from pt2tf_serve.grpc_services import _abort
from pt2tf_serve.process import ServerProcess, config_copy, embedded_flags
from pt2tf_serve.status import ServingError
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODEL = "resnet18"
ATOL = 2e-4
# Batches of two wait up to BATCH_WAIT_S to fill; one thread; one batch may wait. A lone request
# waits the whole time, two together run at once.
BATCH_WAIT_S = 6
PAIRS = f"""
max_batch_size {{ value: 2 }}
batch_timeout_micros {{ value: {BATCH_WAIT_S * 1_000_000} }}
max_enqueued_batches {{ value: 1 }}
num_batch_threads {{ value: 1 }}
"""
# Shorter than BATCH_WAIT_S: a caller who finds a stale request in the open batch misses it.
PAIR_DEADLINE_S = BATCH_WAIT_S - 1.5


def _request(tensor: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["input"].CopyFrom(tf.make_tensor_proto(tensor))
    return request


@pytest.fixture(scope="module")
def pairs_server(repository, expected, tmp_path_factory):
    """A server whose batches of two wait BATCH_WAIT_S to fill, its session run once by a pair (warmup's lone
    records would each wait BATCH_WAIT_S): a session's first run optimises the graph and creates the kernels,
    and in a CI run on a slow Sapphire Rapids host it outlasted PAIR_DEADLINE_S in the first case."""
    config = config_copy(tmp_path_factory.mktemp("pairs") / "config", batching=PAIRS)
    flags = embedded_flags(config, repository, "--rest_api_timeout_in_ms=60000", "--enable_model_warmup=false")
    with ServerProcess(flags) as server, grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        pair = [stub.Predict.future(_request(expected.tensors[i : i + 1]), timeout=120) for i in (0, 1)]
        for call in pair:
            call.result()
        yield server


def _expire(stub, request, _server) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=0.5)
    # The client's own timer, or the server's queue answer (batching_session.cc's) if it comes first.
    assert raised.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _cancel(stub, request, _server) -> None:
    call = stub.Predict.future(request, timeout=60)
    time.sleep(0.5)
    call.cancel()


def _disconnect(_stub, request, server) -> None:
    body = orjson.dumps({"instances": tf.make_ndarray(request.inputs["input"])}, option=orjson.OPT_SERIALIZE_NUMPY)
    with socket.create_connection(("127.0.0.1", server.rest_port)) as gone:
        head = f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        gone.sendall(head.encode() + body)
        time.sleep(0.5)


@pytest.mark.parametrize(
    "leave", [_expire, _cancel, _disconnect], ids=["deadline-passes", "grpc-cancel", "rest-disconnect"]
)
def test_a_queued_request_whose_caller_left_frees_its_batch_slot(pairs_server, expected, leave: Callable):
    logged = len(pairs_server.log())  # the server is the module's: judge this case's lines only
    with grpc.insecure_channel(pairs_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        leave(stub, _request(expected.tensors[:1]), pairs_server)
        time.sleep(1.0)  # the server notices the caller left (a second: a stall of the server's loop may delay it)
        # Two callers together fill a batch and run at once. Were the first request still in the
        # open batch, the first of them would fill it and the second would wait BATCH_WAIT_S alone.
        calls = [stub.Predict.future(_request(expected.tensors[i : i + 1]), timeout=PAIR_DEADLINE_S) for i in (1, 2)]
        for i, call in zip((1, 2), calls, strict=True):
            try:
                response = call.result()
            except grpc.RpcError as error:
                pytest.fail(f"caller {i} got {error.code().name}: the request whose caller left kept its slot")
            got = tf.make_ndarray(response.outputs["output"])
            np.testing.assert_allclose(got, expected.logits[i : i + 1], atol=ATOL)
    assert "Traceback" not in pairs_server.log()[logged:], pairs_server.tail()


class _GoneCaller:
    """Stands in for grpc.aio's ServicerContext at the one moment a real server cannot be made to
    reach on demand: the caller's stream is closed in grpc's core, but the close has not reached
    the servicer yet, so abort's send fails with cygrpc.ExecuteBatchError (as the full suite
    on a loaded machine saw: grpc.aio then logs "ExecuteBatchError raised in core by servicer
    method" with a traceback, because its client_closed flag is not yet set)."""

    def __init__(self):
        self.aborted = []

    async def abort(self, code, details):
        self.aborted.append((code, details))
        raise ExecuteBatchError('Failed "execute_batch": (<SendStatusFromServerOperation>,)')


def test_an_error_for_a_caller_already_gone_ends_the_call_as_cancelled_not_as_a_servicer_failure():
    context = _GoneCaller()
    error = ServingError("DEADLINE_EXCEEDED", "Deadline exceeded while waiting in the batch queue")
    # grpc.aio's _handle_exceptions logs a CancelledError at debug level and sends nothing.
    with pytest.raises(asyncio.CancelledError, match="DEADLINE_EXCEEDED"):
        asyncio.run(_abort(context, error))
    assert context.aborted == [(grpc.StatusCode.DEADLINE_EXCEEDED, error.message)]


def test_an_error_for_a_caller_still_there_is_sent_as_its_code(served):
    # The other side of the same path, with a real server: the status reaches a caller who waits.
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "no-such-model"
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND, raised.value.details()


def test_rest_timeout_of_zero_means_no_timeout_as_in_tf_serving(repository, expected, tmp_path):
    # http_rest_api_handler.cc sets RunOptions.timeout_in_ms only when the flag is positive.
    flags = embedded_flags(config_copy(tmp_path / "config"), repository, "--rest_api_timeout_in_ms=0")
    with ServerProcess(flags) as server, RestClient(server.rest_url, timeout=60) as rest:
        outputs = rest.predict(MODEL, {"input": expected.tensors[:2]})
    np.testing.assert_allclose(outputs["output"], expected.logits[:2], atol=ATOL)


@pytest.mark.parametrize("seconds", [None, 3600.0, 10 * 365 * 86400.0], ids=["none", "an-hour", "ten-years"])
def test_grpc_deadline_none_or_far_away_is_served(served, expected, seconds: float | None):
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(_request(expected.tensors[:1]), timeout=seconds)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["output"]), expected.logits[:1], atol=ATOL)
