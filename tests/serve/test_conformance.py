"""TF Serving's protocol, checked against a live server: every endpoint, format and error code.

Runs against the embedded server with batching on and off (the `target` fixture), or against an
external server such as the real tensorflow/serving image (see tests/serve/conformance/README.md).
Served answers are compared with in-process `tf.saved_model.load` answers for the same inputs.
Where the embedded server knowingly differs from TF Serving, the test says so by name
(`embedded_only`) and the README lists the difference.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import urllib.parse

import grpc
import numpy as np
import orjson
import pytest
import tensorflow as tf
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pt2tf_serve.client import RestClient
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

MODEL = "resnet18"
# Batching merges requests into other batch sizes; oneDNN's kernels then sum in another order.
ATOL = 2e-4


# ---------------------------------------------------------------------------- helpers


@pytest.fixture
def rest(target):
    with RestClient(target.rest_url, timeout=60) as client:
        yield client


@pytest.fixture
def channel(target):
    options = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
    with grpc.insecure_channel(target.grpc_target, options=options) as chan:
        yield chan


@pytest.fixture
def prediction(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def post(rest: RestClient, path: str, body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    status, data = rest.raw("POST", path, raw)
    return status, json.loads(data)  # the standard library reads NaN and Infinity, as TF Serving writes them


def get(rest: RestClient, path: str) -> tuple[int, dict]:
    status, data = rest.raw("GET", path)
    return status, json.loads(data)


def error_of(rest: RestClient, method: str, path: str, body=None) -> tuple[int, str]:
    if method == "GET":
        status, answer = get(rest, path)
    else:
        status, answer = post(rest, path, body)
    assert set(answer) == {"error"}, answer
    return status, answer["error"]


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def predict_request(signature: str = "", version: int | None = None, label: str | None = None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def grpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=60)
    return caught.value


def embedded_only(target, difference: str) -> None:
    """Skip on an external server: `difference` says how TF Serving differs (README, "Where it differs")."""
    if target.server is None:
        pytest.skip(f"embedded server only; TF Serving differs: {difference}")


# ---------------------------------------------------------------------------- REST: status and metadata


def test_rest_status_lists_every_version_newest_first(rest):
    status, answer = get(rest, f"/v1/models/{MODEL}")
    assert status == 200
    assert answer == {
        "model_version_status": [
            {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in ("2", "1")
        ]
    }


def test_rest_status_of_one_version_and_unknowns(rest):
    status, answer = get(rest, f"/v1/models/{MODEL}/versions/1")
    assert status == 200 and [s["version"] for s in answer["model_version_status"]] == ["1"]
    assert error_of(rest, "GET", f"/v1/models/{MODEL}/versions/99") == (
        404,
        f"Could not find version 99 of model {MODEL}",
    )
    assert error_of(rest, "GET", "/v1/models/nope") == (404, "Could not find any versions of model nope")
    assert error_of(rest, "GET", "/v1/models") == (400, "Missing model name in request.")


def test_rest_metadata_renders_the_signature_def_map(rest):
    status, answer = get(rest, f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert answer["model_spec"]["name"] == MODEL and answer["model_spec"]["version"] == "2"
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    serving = signatures["serving_default"]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert serving["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in serving["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "3", "224", "224"]
    assert [d["size"] for d in serving["outputs"]["output"]["tensor_shape"]["dim"]] == ["-1", "1000"]
    images = signatures["predict_images"]
    assert images["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert {k: v["dtype"] for k, v in images["outputs"].items()} == {
        "probabilities": "DT_FLOAT",
        "classes": "DT_INT32",
        "labels": "DT_STRING",
        "scores": "DT_FLOAT",
        "weights": "DT_STRING",
    }
    _, by_label = get(rest, f"/v1/models/{MODEL}/labels/stable/metadata")
    assert by_label["model_spec"]["version"] == "1"


# ---------------------------------------------------------------------------- REST: predict


def test_rest_row_format_tensor_matches_in_process(rest, expected):
    status, answer = post(rest, f"/v1/models/{MODEL}:predict", {"instances": expected.tensors[:3]})
    assert status == 200 and set(answer) == {"predictions"}
    np.testing.assert_allclose(np.array(answer["predictions"], np.float32), expected.logits[:3], atol=ATOL)


def test_rest_named_instances_and_signature_name(rest, expected):
    body = {"signature_name": "serving_default", "instances": [{"input": x} for x in expected.tensors[:2]]}
    status, answer = post(rest, f"/v1/models/{MODEL}:predict", body)
    assert status == 200
    np.testing.assert_allclose(np.array(answer["predictions"], np.float32), expected.logits[:2], atol=ATOL)


def test_rest_columnar_format_tensor(rest, expected):
    status, answer = post(rest, f"/v1/models/{MODEL}:predict", {"inputs": expected.tensors[:2]})
    assert status == 200 and set(answer) == {"outputs"}
    np.testing.assert_allclose(np.array(answer["outputs"], np.float32), expected.logits[:2], atol=ATOL)


def test_rest_images_as_b64_match_in_process(rest, expected):
    body = {"signature_name": "predict_images", "instances": [b64(p) for p in expected.photos]}
    status, answer = post(rest, f"/v1/models/{MODEL}:predict", body)
    assert status == 200
    rows = answer["predictions"]
    assert len(rows) == len(expected.photos)
    assert set(rows[0]) == {"probabilities", "classes", "labels", "scores", "weights"}
    want = expected.photo_outputs
    assert [r["classes"] for r in rows] == want["classes"].tolist()
    assert [r["weights"] for r in rows] == [w.decode() for w in want["weights"]]  # a plain JSON string
    assert [r["labels"] for r in rows] == [[x.decode() for x in row] for row in want["labels"]]
    np.testing.assert_allclose(np.array([r["scores"] for r in rows], np.float32), want["scores"], atol=ATOL)


def test_rest_images_columnar_gives_an_object_of_outputs(rest, expected):
    body = {"signature_name": "predict_images", "inputs": {"image_bytes": [b64(expected.photos[0])]}}
    status, answer = post(rest, f"/v1/models/{MODEL}:predict", body)
    assert status == 200
    outputs = answer["outputs"]
    assert set(outputs) == {"probabilities", "classes", "labels", "scores", "weights"}
    assert outputs["classes"] == expected.photo_outputs["classes"][:1].tolist()


def test_rest_version_and_label_routing(rest, expected):
    body = {"instances": expected.tensors[:1]}
    for path in ("/versions/1", "/versions/2", "/labels/stable", "/labels/canary"):
        status, answer = post(rest, f"/v1/models/{MODEL}{path}:predict", body)
        assert status == 200, (path, answer)
        np.testing.assert_allclose(np.array(answer["predictions"], np.float32), expected.logits[:1], atol=ATOL)
    assert error_of(rest, "POST", f"/v1/models/{MODEL}/labels/nope:predict", body) == (
        400,
        "Unrecognized servable version label: nope",
    )
    assert error_of(rest, "POST", f"/v1/models/{MODEL}/versions/99:predict", body) == (
        404,
        f"Servable not found for request: Specific({MODEL}, 99)",
    )
    assert error_of(rest, "POST", "/v1/models/nope:predict", body) == (
        404,
        "Servable not found for request: Latest(nope)",
    )


def test_rest_classify_and_regress_on_a_predict_only_model(rest):
    body = {"examples": [{"x": 1.0}]}
    status, message = error_of(rest, "POST", f"/v1/models/{MODEL}:classify", body)
    assert status == 400 and message.startswith("No classification inputs found in SignatureDef: ")
    status, message = error_of(rest, "POST", f"/v1/models/{MODEL}:regress", body)
    assert status == 400 and message.startswith("No regression inputs found in SignatureDef: ")


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"{not json", 400, "JSON Parse error: "),
        (b"", 400, "JSON Parse error: The document is empty"),
        (b"[1, 2]", 400, "JSON Value: [1"),
        ({"instances": [[1.0]], "inputs": [[1.0]]}, 400, "expecting only one of 'inputs' or 'instances' keys to exist"),
        ({"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
        ({"instances": []}, 400, "No values in 'instances' array"),
        ({"instances": {"input": 1}}, 400, "Expecting 'instances' to be an list/array"),
        ({"signature_name": 7, "instances": [1]}, 400, "'signature_name' key must be a string value"),
        (
            {"signature_name": "nope", "instances": [1]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        ({"instances": [[["x"]]]}, 400, "Type: String is not of expected type: float"),
        ({"instances": [[[True]]]}, 400, "Type: True is not of expected type: float"),
        ({"instances": [[[1.0, 2.0], [3.0]]]}, 400, "Failed to process element: 0 of 'instances' list"),
        ({"instances": [{"nope": 1.0}]}, 400, "does not have named input: nope"),
        ({"signature_name": "predict_images", "instances": [{"b64": "!!!"}]}, 400, "Unable to base64 decode"),
        ({"signature_name": "predict_images", "instances": [{"b64": 1}]}, 400, "not of expected type: string"),
    ],
    ids=[
        "malformed-json",
        "empty-body",
        "not-an-object",
        "both-formats",
        "neither-format",
        "empty-instances",
        "instances-not-a-list",
        "signature-name-not-a-string",
        "unknown-signature",
        "string-for-float",
        "bool-for-float",
        "ragged",
        "unknown-named-input",
        "bad-base64",
        "b64-not-a-string",
    ],
)
def test_rest_bad_requests_get_tf_serving_errors(rest, body, code, message):
    status, error = error_of(rest, "POST", f"/v1/models/{MODEL}:predict", body)
    assert status == code
    assert message in error, error


def test_rest_wrong_shape_is_invalid_argument(rest):
    status, error = error_of(rest, "POST", f"/v1/models/{MODEL}:predict", {"instances": [[1.0, 2.0]]})
    assert status == 400, error


def test_rest_undecodable_image_fails_alone(rest, expected):
    body = {"signature_name": "predict_images", "instances": [b64(b"this is not an image")]}
    status, error = error_of(rest, "POST", f"/v1/models/{MODEL}:predict", body)
    assert status == 400, error
    good = {"signature_name": "predict_images", "instances": [b64(expected.photos[0])]}
    assert post(rest, f"/v1/models/{MODEL}:predict", good)[0] == 200


def test_rest_nan_and_infinity_are_accepted_as_tf_serving_does(rest, expected):
    tensor = expected.tensors[:1].copy()
    tensor[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    body = json.dumps({"instances": tensor.tolist()}).encode()  # writes the bare NaN / Infinity tokens
    assert b"NaN" in body and b"-Infinity" in body
    status, answer = post(rest, f"/v1/models/{MODEL}:predict", body)
    assert status == 200, answer
    # Whether a NaN reaches the logits is the kernels' business, not the server's: oneDNN's ReLU and
    # max-pool may drop it, and which kernel runs depends on the CPU and the batch size. What the
    # server owes is an answer that parses, with any NaN written back as a bare token, not a string.
    predictions = np.array(answer["predictions"], np.float64)
    assert predictions.shape == (1, 1000)
    assert not any(isinstance(x, str) for x in answer["predictions"][0])


def test_rest_paths_outside_the_api(rest):
    status, data = rest.raw("GET", "/nothing/here")
    assert status == 404 and b"Not Found" in data
    assert error_of(rest, "GET", f"/v1/models/{MODEL}:predict") == (
        400,
        f"Malformed request: GET /v1/models/{MODEL}:predict",
    )
    assert error_of(rest, "POST", f"/v1/models/{MODEL}/metadata", {}) == (
        400,
        f"Malformed request: POST /v1/models/{MODEL}/metadata",
    )


def test_rest_model_names_never_reach_the_file_system(rest, expected):
    body = {"instances": expected.tensors[:1]}
    for name in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc", "resnet18%2F..%2F..%2Fmodels"):
        status, error = error_of(rest, "POST", f"/v1/models/{name}:predict", body)
        assert status == 404 and error.startswith("Servable not found for request: Latest("), error


def test_rest_oversized_body_is_refused_and_the_server_keeps_serving(target, rest, expected):
    embedded_only(target, "it reads REST bodies of any size; the embedded server refuses those over 256 MiB")
    import http.client

    connection = http.client.HTTPConnection(target.rest_url.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", f"/v1/models/{MODEL}:predict")
    connection.putheader("Content-Length", str(1 << 30))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 429 and b"limit" in answer.read()
    connection.close()
    assert post(rest, f"/v1/models/{MODEL}:predict", {"instances": expected.tensors[:1]})[0] == 200


def test_rest_metrics_count_requests_and_batches(target, rest, expected):
    post(rest, f"/v1/models/{MODEL}:predict", {"instances": expected.tensors[:1]})
    status, page = rest.raw("GET", "/monitoring/prometheus/metrics")
    assert status == 200
    text = page.decode()
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}}' in text
    assert (
        f':tensorflow:serving:request_latency_bucket{{model_name="{MODEL}",API="predict",entrypoint="REST",le="+Inf"}}'
        in text
    )
    if target.batching is not None:
        assert (":tensorflow:serving:batching_session:processed_batch_size_count{}" in text) == target.batching


# ---------------------------------------------------------------------------- gRPC


def test_grpc_predict_tensor_matches_in_process(prediction, expected):
    response = prediction.Predict(predict_request(input=expected.tensors[:2]), timeout=60)
    assert response.model_spec.name == MODEL
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 2
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["output"]), expected.logits[:2], atol=ATOL)
    # TF Serving's default encoding: typed repeated fields, not tensor_content
    assert len(response.outputs["output"].float_val) == 2000 and not response.outputs["output"].tensor_content


def test_grpc_predict_images_with_output_filter(prediction, expected):
    request = predict_request("predict_images", image_bytes=np.array(expected.photos[:3], dtype=object))
    request.output_filter.extend(["labels", "classes"])
    response = prediction.Predict(request, timeout=60)
    assert set(response.outputs) == {"labels", "classes"}
    assert tf.make_ndarray(response.outputs["classes"]).tolist() == expected.photo_outputs["classes"][:3].tolist()
    assert tf.make_ndarray(response.outputs["labels"]).tolist() == expected.photo_outputs["labels"][:3].tolist()


def test_grpc_version_and_label_routing(prediction, expected):
    for kwargs, version in (({"version": 1}, 1), ({"label": "stable"}, 1), ({"label": "canary"}, 2), ({}, 2)):
        response = prediction.Predict(predict_request(input=expected.tensors[:1], **kwargs), timeout=60)
        assert response.model_spec.version.value == version


def test_grpc_large_batch_beyond_default_message_limits(prediction, expected):
    batch = np.concatenate([expected.tensors] * 5)  # 40 × 600 KB: past gRPC's 4 MB default
    response = prediction.Predict(predict_request(input=batch), timeout=120)
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["output"]), np.concatenate([expected.logits] * 5), atol=ATOL
    )


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        ({"version": 99}, grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({MODEL}, 99)"),
        ({"label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope"),
        ({"signature": "nope"}, grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
        ({"inputs": {"x": np.zeros((1, 3, 224, 224), np.float32)}}, grpc.StatusCode.INVALID_ARGUMENT, "input x"),
        ({"inputs": {"input": np.zeros((1, 3, 224, 224), np.int32)}}, grpc.StatusCode.INVALID_ARGUMENT, "int32"),
        ({"inputs": {"input": np.zeros((1, 224, 224), np.float32)}}, grpc.StatusCode.INVALID_ARGUMENT, ""),
        (
            {"inputs": {"input": np.zeros((1, 3, 224, 224), np.float32), "extra": np.zeros(1, np.float32)}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 2!=1",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "unknown-label",
        "unknown-signature",
        "wrong-input-name",
        "wrong-dtype",
        "wrong-shape",
        "extra-input",
    ],
)
def test_grpc_predict_errors_have_tf_serving_codes(prediction, kwargs, code, message):
    inputs = kwargs.get("inputs", {"input": np.zeros((1, 3, 224, 224), np.float32)})
    request = predict_request(kwargs.get("signature", ""), kwargs.get("version"), kwargs.get("label"), **inputs)
    request.model_spec.name = kwargs.get("model", MODEL)
    error = grpc_error(prediction.Predict, request)
    assert error.code() == code, error.details()
    if message == "input x":
        assert "x" in error.details()
    else:
        assert message in error.details(), error.details()


def test_grpc_predict_without_model_spec(prediction):
    error = grpc_error(prediction.Predict, predict_pb2.PredictRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "Missing ModelSpec"


def test_grpc_model_metadata(prediction):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = prediction.GetModelMetadata(request, timeout=60)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "predict_images"} <= set(signatures.signature_def)
    request.metadata_field[:] = ["nope"]
    error = grpc_error(prediction.GetModelMetadata, request)
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "Metadata field nope is not supported"
    )


def test_grpc_model_status(models):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = models.GetModelStatus(request, timeout=60)
    states = get_model_status_pb2.ModelVersionStatus.State
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, states.AVAILABLE),
        (1, states.AVAILABLE),
    ]
    request.model_spec.name = "nope"
    error = grpc_error(models.GetModelStatus, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == "Could not find any versions of model nope"


def test_grpc_health_check_answers_as_tf_serving(channel):
    # docker/config/server.flags turns on --enable_grpc_healthcheck_service; Kubernetes' grpc probes ask this.
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "ModelService", "PredictionService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    # TF Serving registers the short names only: a probe written with the full name never passes.
    error = grpc_error(health.Check, health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_classify_regress_and_multi_inference_on_a_predict_only_model(prediction):
    spec = {"name": MODEL, "signature_name": "serving_default"}
    example_list = {"examples": [{}]}
    classify = classification_pb2.ClassificationRequest(model_spec=spec, input={"example_list": example_list})
    error = grpc_error(prediction.Classify, classify)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No classification inputs found in SignatureDef")
    regress = regression_pb2.RegressionRequest(model_spec=spec, input={"example_list": example_list})
    error = grpc_error(prediction.Regress, regress)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    multi = inference_pb2.MultiInferenceRequest(
        tasks=[inference_pb2.InferenceTask(model_spec=spec, method_name="tensorflow/serving/classify")],
        input={"example_list": example_list},
    )
    error = grpc_error(prediction.MultiInference, multi)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_rest_and_grpc_share_one_answer(rest, prediction, expected):
    request = predict_request("predict_images", image_bytes=np.array(expected.photos[:1], dtype=object))
    via_grpc = prediction.Predict(request, timeout=60)
    body = {"signature_name": "predict_images", "instances": [b64(expected.photos[0])]}
    _, via_rest = post(rest, f"/v1/models/{MODEL}:predict", body)
    assert via_rest["predictions"][0]["classes"] == tf.make_ndarray(via_grpc.outputs["classes"])[0].tolist()


def test_version_label_wrapper_is_int64(prediction, expected):
    request = predict_request(input=expected.tensors[:1])
    request.model_spec.version.CopyFrom(wrappers_pb2.Int64Value(value=1))
    assert prediction.Predict(request, timeout=60).model_spec.version.value == 1


# ---------------------------------------------------------------------------- clients of other languages


class TestClientsOfOtherLanguages:
    """Requests as C++, Go, Java clients and curl send them, built from the protocol, not our client code.

    gRPC: no deadline (gRPC's default everywhere), default message limits, the tensor as raw
    `tensor_content` bytes. REST: `Expect: 100-continue` (curl sends it for bodies over 1 KiB),
    a chunked body (streaming clients), HTTP/1.0 (old proxies, load balancers' health checks).
    """

    @staticmethod
    def _tensor_content_request(tensor: np.ndarray) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        proto = request.inputs["input"]
        proto.dtype = tf.float32.as_datatype_enum
        for size in tensor.shape:
            proto.tensor_shape.dim.add(size=size)
        proto.tensor_content = np.ascontiguousarray(tensor, dtype="<f4").tobytes()
        return request

    def test_grpc_without_deadline_default_limits_and_tensor_content(self, target, expected):
        with grpc.insecure_channel(target.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(self._tensor_content_request(expected.tensors[:2]))
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["output"]), expected.logits[:2], atol=ATOL)

    @staticmethod
    def _body(expected) -> bytes:
        return orjson.dumps({"instances": expected.tensors[:1]}, option=orjson.OPT_SERIALIZE_NUMPY)

    @staticmethod
    def _read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
        """One HTTP response off a raw socket: status line, headers, and body (by length, or to the close)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before the response head: {data!r}")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = headers.get("content-length")
        while (length is None or len(body) < int(length)) and (chunk := sock.recv(65536)):
            body += chunk
        return status, headers, body

    def _check_logits(self, body: bytes, expected) -> None:
        np.testing.assert_allclose(
            np.array(orjson.loads(body)["predictions"], np.float32), expected.logits[:1], atol=ATOL
        )

    def test_rest_expect_100_continue(self, target, expected):
        host, port = _host_port(target.rest_url)
        body = self._body(expected)
        with socket.create_connection((host, port), timeout=60) as sock:
            sock.sendall(
                f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            interim = sock.recv(1024)
            assert interim.startswith(b"HTTP/1.1 100"), interim
            sock.sendall(body)
            status, _, answer = self._read_response(sock)
        assert status.startswith("HTTP/1.1 200"), (status, answer[:300])
        self._check_logits(answer, expected)

    def test_rest_chunked_body(self, target, expected):
        host, port = _host_port(target.rest_url)
        body = self._body(expected)
        pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            connection.request("POST", f"/v1/models/{MODEL}:predict", body=pieces, encode_chunked=True)
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        assert response.status == 200, answer[:300]
        self._check_logits(answer, expected)

    def test_rest_http_1_0(self, target, expected):
        host, port = _host_port(target.rest_url)
        body = self._body(expected)
        with socket.create_connection((host, port), timeout=60) as sock:
            sock.sendall(
                f"POST /v1/models/{MODEL}:predict HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
            status, _, answer = self._read_response(sock)
        assert status.split()[1] == "200", (status, answer[:300])
        self._check_logits(answer, expected)


def _host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname, parsed.port
