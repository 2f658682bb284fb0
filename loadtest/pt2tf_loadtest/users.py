"""Locust users for TF Serving's REST and gRPC APIs: tensors and JPEG bytes, each answer checked.

Timing lives in one place per protocol: Locust's FastHttpUser times REST, and `TimingInterceptor`
times every gRPC call and fires Locust's `request` event (the pattern of Locust's own gRPC
example). A wrong answer — an error, a wrong shape, a top-1 class other than the in-process
answer for that image — is a failure, never a success. User classes stay small.

Used by the scenario runner (library mode) and by the locust command line, distributed mode
included (see loadtest/locustfile.py).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
import orjson
import tensorflow as tf
from locust import User, constant, task
from locust.contrib.fasthttp import FastHttpUser
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from .inputs import PREDICT_IMAGES, SERVING_DEFAULT, Inputs, Payload
from .openloop import Arrivals, sending_lag

grpc_gevent.init_gevent()  # gRPC's I/O must yield to gevent, or one user blocks them all
# TensorFlow (for TF Serving's protos) is imported here, once: imported lazily by users starting
# together, greenlets would see it half-initialized.

MAX_MESSAGE = 2**31 - 1


@dataclass
class Target:
    """What every user sends to: set by the runner, or from the locust command line."""

    grpc: str = ""
    model: str = ""  # the served model: the export's (runner, rollout) or --model-name (locustfile)
    version: int | None = None
    label: str | None = None
    inputs: Inputs | None = None
    timeout: float = 60.0
    arrivals: Arrivals | None = None  # open-loop load: each request waits for its due time (openloop.py)
    split: LabelSplit | None = None  # each request picks its version label (a canary's share of traffic)

    def request_label(self) -> str | None:
        """The label this request asks for: the split's pick, else the fixed one (None: no label)."""
        return self.split.pick() if self.split is not None else self.label

    def rest_path(self, label: str | None = None) -> str:
        path = f"/v1/models/{self.model}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif label is not None:
            path += f"/labels/{label}"
        return path + ":predict"


class LabelSplit:
    """Client-side traffic split between two version labels, as a TF Serving client must do it: the server
    routes by the label a request names and splits nothing itself. A real client does the same per request
    (gRPC `model_spec.version_label`, REST `/labels/<label>`), with its own share and random source."""

    def __init__(self, share: float, label: str = "canary", other: str = "stable", seed: int = 0):
        if not 0 <= share <= 1:
            raise ValueError(f"a traffic share is between 0 and 1, not {share}")
        self.share, self.label, self.other = share, label, other
        self._random = random.Random(seed)

    def pick(self) -> str:
        return self.label if self._random.random() < self.share else self.other


TARGET = Target()


class WrongAnswer(Exception):
    """The server answered, but not what the model answers in process."""


def check_top1(kind: str, outputs: dict[str, np.ndarray], expected: int) -> None:
    """Raise WrongAnswer unless `outputs` are one row whose top-1 class is `expected`."""
    if kind == SERVING_DEFAULT:
        logits = outputs.get("output")
        if logits is None or logits.shape != (1, 1000):
            raise WrongAnswer(f"output shape {None if logits is None else logits.shape}, expected (1, 1000)")
        got = int(np.argmax(logits[0]))
    else:
        classes = outputs.get("classes")
        if classes is None or classes.shape != (1, 5):
            raise WrongAnswer(f"classes shape {None if classes is None else classes.shape}, expected (1, 5)")
        got = int(classes[0][0])
    if got != expected:
        raise WrongAnswer(f"top-1 class {got}, the in-process answer is {expected}")


class TimingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Times each gRPC call, checks its answer, and reports it through Locust's request event."""

    def __init__(self, environment, check: Callable[[Any, Any], None]):
        self.environment = environment
        self.check = check

    def intercept_unary_unary(self, continuation, client_call_details, request):
        started = time.perf_counter()
        exception, length, elapsed = None, 0, None
        call = continuation(client_call_details, request)
        try:
            response = call.result()
            elapsed = time.perf_counter() - started  # the answer's arrival, as REST is timed: checking it is ours
            length = response.ByteSize()
            self.check(request, response)
        except grpc.RpcError as error:
            elapsed, exception = time.perf_counter() - started, error
        except Exception as error:  # a wrong answer, or one too odd to check: a failure either way
            exception = error if isinstance(error, WrongAnswer) else WrongAnswer(f"{type(error).__name__}: {error}")
            elapsed = elapsed if elapsed is not None else time.perf_counter() - started
        elapsed += sending_lag()  # open-loop load: timed from when the request was due, not when it went out
        self.environment.events.request.fire(
            request_type="grpc",
            name=client_call_details.method.rsplit("/", 1)[-1]
            + f" {request.model_spec.signature_name}"
            + (f" @{request.model_spec.version_label}" if request.model_spec.version_label else ""),
            response_time=elapsed * 1000,
            response_length=length,
            exception=exception,
            context={},
        )
        return call


_REQUESTS: dict[tuple, tuple[list, dict[int, int], list[Payload]]] = {}


def _grpc_requests(
    signature: str, input_key: str, payloads: list[Payload], label: str | None
) -> tuple[list, dict[int, int]]:
    """PredictRequests for `payloads` and each one's expected class, built once and shared by every user."""
    # The payloads' identities are in the key, and the entry keeps them alive so no other object can take
    # their ids: a step with other inputs or answers never reuses another step's requests.
    key = (signature, TARGET.model, TARGET.version, label, tuple(id(p) for p in payloads))
    if key not in _REQUESTS:
        requests, expected = [], {}
        for payload in payloads:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = TARGET.model
            request.model_spec.signature_name = signature
            if TARGET.version is not None:
                request.model_spec.version.value = TARGET.version
            elif label is not None:
                request.model_spec.version_label = label
            request.inputs[input_key].CopyFrom(tf.make_tensor_proto(payload.grpc_value))
            requests.append(request)
            expected[id(request)] = payload.expected_class
        if len(_REQUESTS) > 4:  # one target at a time (two labels, two signatures at most): no growth
            _REQUESTS.clear()
        _REQUESTS[key] = (requests, expected, list(payloads))
    requests, expected, _ = _REQUESTS[key]
    return requests, expected


class _GrpcUser(User):
    """A gRPC PredictionService client whose calls the interceptor times; subclasses pick the payloads."""

    abstract = True
    wait_time = constant(0)
    signature = SERVING_DEFAULT
    input_key = "input"

    def on_start(self) -> None:
        self.cycles: dict[str | None, Any] = {}
        self.expected: dict[int, int] = {}
        options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        self.channel = grpc.insecure_channel(TARGET.grpc, options=options)
        intercepted = grpc.intercept_channel(self.channel, TimingInterceptor(self.environment, self._check))
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(intercepted)

    def _next_request(self):
        label = TARGET.request_label()
        if label not in self.cycles:
            requests, expected = _grpc_requests(self.signature, self.input_key, self.payloads(), label)
            self.cycles[label] = itertools.cycle(requests)
            self.expected.update(expected)
        return next(self.cycles[label])

    def payloads(self) -> list[Payload]:
        raise NotImplementedError

    def _check(self, request, response) -> None:
        outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        check_top1(self.signature, outputs, self.expected[id(request)])

    @task
    def predict(self) -> None:
        if TARGET.arrivals is not None:
            TARGET.arrivals.wait()
        with contextlib.suppress(grpc.RpcError):  # already reported by the interceptor
            self.stub.Predict(self._next_request(), timeout=TARGET.timeout)

    def on_stop(self) -> None:
        self.channel.close()


class GrpcTensorUser(_GrpcUser):
    """gRPC Predict on serving_default with a float tensor [1, 3, 224, 224]."""

    def payloads(self) -> list[Payload]:
        return TARGET.inputs.tensors


class GrpcImageUser(_GrpcUser):
    """gRPC Predict on predict_images with JPEG bytes."""

    signature = PREDICT_IMAGES
    input_key = "image_bytes"

    def payloads(self) -> list[Payload]:
        return TARGET.inputs.images


class _RestUser(FastHttpUser):
    """A REST client (geventhttpclient, keep-alive); subclasses pick the payloads."""

    abstract = True
    wait_time = constant(0)
    signature = SERVING_DEFAULT
    network_timeout = 60.0
    connection_timeout = 60.0

    def on_start(self) -> None:
        self.cycle = itertools.cycle(self.payloads())

    def payloads(self) -> list[Payload]:
        raise NotImplementedError

    @task
    def predict(self) -> None:
        lag = TARGET.arrivals.wait() if TARGET.arrivals is not None else 0.0
        payload = next(self.cycle)
        label = TARGET.request_label()
        name = f":predict {self.signature}" + (f" @{label}" if label else "")
        path = TARGET.rest_path(label)
        with self.client.post(path, data=payload.rest_body, name=name, catch_response=True) as answer:
            answer.request_meta["response_time"] += lag * 1000  # open loop: timed from when it was due
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}: {(answer.text or '')[:200]}")
                return
            try:
                predictions = orjson.loads(answer.content)["predictions"]
                if self.signature == SERVING_DEFAULT:
                    outputs = {"output": np.asarray(predictions, dtype=np.float32)}
                else:
                    outputs = {"classes": np.asarray([row["classes"] for row in predictions])}
                check_top1(self.signature, outputs, payload.expected_class)
            except (WrongAnswer, KeyError, TypeError, ValueError) as error:
                answer.failure(f"{type(error).__name__}: {error}")


class RestTensorUser(_RestUser):
    """REST :predict on serving_default, row format, a float tensor as JSON (3.1 MB)."""

    def payloads(self) -> list[Payload]:
        return TARGET.inputs.tensors


class RestImageUser(_RestUser):
    """REST :predict on predict_images with JPEG bytes as {"b64": ...}."""

    signature = PREDICT_IMAGES

    def payloads(self) -> list[Payload]:
        return TARGET.inputs.images


USERS = {
    "grpc-tensor": GrpcTensorUser,
    "grpc-image": GrpcImageUser,
    "rest-tensor": RestTensorUser,
    "rest-image": RestImageUser,
}
