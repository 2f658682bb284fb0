"""Talk to a TF Serving model server — the real tensorflow/serving image or the embedded one — over REST or gRPC.

    pt2tf-client --rest http://127.0.0.1:8501 classify photo.jpg cat.png
    pt2tf-client --grpc 127.0.0.1:8500 classify batch.npy --labels artifacts/onnx2tf/reference.npz
    pt2tf-client --rest http://127.0.0.1:8501 --version 2 classify photo.jpg --json
    pt2tf-client --grpc 127.0.0.1:8500 status
    pt2tf-client --rest http://127.0.0.1:8501 --label stable metadata

`classify` sends an image file (.jpg, .jpeg, .png) as raw bytes through the `predict_images`
signature, and a tensor file (.npy, float32 [3, 224, 224] or [N, 3, 224, 224], NCHW and
normalized) through `serving_default`, and prints the top-5 classes with the round-trip time.
The server flags may stand before or after the subcommand. Errors are one line on stderr and
exit code 1.

The library side is `RestClient` and `GrpcClient`: one `predict` / `status` / `metadata` each,
the protocol exactly TF Serving's (REST row format with {"b64": ...} for bytes; gRPC through the
tensorflow-serving-api stubs), and `top5` to read either signature's outputs.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import orjson

DEFAULT_MODEL = "resnet18"
TENSOR_SIGNATURE, TENSOR_INPUT = "serving_default", "input"
IMAGE_SIGNATURE, IMAGE_INPUT = "predict_images", "image_bytes"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SERVER_HINT = "is the server running? (make serve)"
GRPC_MAX_MESSAGE = 2**31 - 1  # TF Serving's own limit: a batch of images is far over gRPC's 4 MB default

# TF Serving answers a failed REST call with the HTTP status its gRPC code maps to; naming the code
# lets REST and gRPC errors read the same.
HTTP_STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
NUMPY_DTYPES = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_HALF": np.float16,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_BOOL": np.bool_,
    "DT_STRING": np.object_,
}

Inputs = dict[str, np.ndarray | Sequence[bytes]]


class ClientError(RuntimeError):
    """A call to the model server failed; the message is one line saying where and why."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.status = status  # HTTP status, REST only
        self.code = code  # gRPC status code name (for REST, the one TF Serving maps to the HTTP status)
        self.detail = detail  # the server's own error text


class InputError(ValueError):
    """A file or flag given to the CLI cannot be used; nothing was sent."""


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _answered(status: int | None, code: str, detail: str) -> ClientError:
    where = f"{status} {code}" if status is not None else code
    return ClientError(f"server answered {where}: {_one_line(detail)}", status=status, code=code, detail=detail)


def _check_version(version: int | None, label: str | None) -> None:
    if version is not None and label is not None:
        raise ValueError(f"give a model version or a version label, not both (version {version}, label {label!r})")


def _batch_size(inputs: Inputs) -> int:
    sizes = {name: len(value) for name, value in inputs.items()}
    if not sizes or len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ValueError(f"inputs need one common, non-zero batch size; got {sizes}")
    return next(iter(sizes.values()))


def signature_defs(metadata: dict) -> dict[str, dict]:
    """The signature_def map (name → SignatureDef as JSON) from a metadata answer of either client."""
    found = metadata.get("metadata", {}).get("signature_def", {})
    # TF Serving nests the SignatureDefMap message itself: {"signature_def": {"signature_def": {...}}}.
    inner = found.get("signature_def")
    return inner if isinstance(inner, dict) else found


def tensor_shape(info: dict) -> list[int] | None:
    """A TensorInfo's shape as a list (-1 for an unknown dimension), None when even the rank is unknown."""
    shape = info.get("tensor_shape", {})
    if shape.get("unknown_rank"):
        return None
    return [int(dim.get("size", 0)) for dim in shape.get("dim", [])]


def _to_bytes(value: Any) -> Any:
    if isinstance(value, list):
        return [_to_bytes(item) for item in value]
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    return value.encode() if isinstance(value, str) else value


def _to_array(values: list, dtype: Any) -> np.ndarray:
    if dtype is np.object_:  # strings come back as bytes, as tf.make_ndarray gives them over gRPC
        return np.array(_to_bytes(values), dtype=object)
    return np.asarray(values, dtype=dtype)


class RestClient:
    """TF Serving's REST API over one keep-alive HTTP/1.1 connection.

    JSON carries neither output dtypes nor, for a one-output signature, the output's name: predict takes
    both from the model's metadata, asked once per model, version or label, and signature.
    """

    def __init__(self, base_url: str, timeout: float = 10.0):
        if "://" not in base_url:
            base_url = f"http://{base_url}"
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a REST server address: {base_url!r} (expected http://HOST:PORT)")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._scheme, self._netloc, self._prefix = parts.scheme, parts.netloc, parts.path.rstrip("/")
        self._connection: http.client.HTTPConnection | None = None
        self._outputs: dict[tuple, dict[str, Any]] = {}  # (model, version, label, signature) → output dtypes

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the keep-alive connection (the next call opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request to `path` (below the base URL); return the HTTP status and body as they came."""
        reused = self._connection is not None
        try:
            return self._send(method, path, body)
        except (ConnectionResetError, BrokenPipeError) as exc:
            if not reused:
                raise ClientError(f"{self.base_url} closed the connection without answering ({exc})") from exc
        try:  # the server had closed the idle keep-alive connection: reconnect once
            return self._send(method, path, body)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ClientError(f"{self.base_url} closed the connection without answering ({exc})") from exc

    def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self._netloc, timeout=self.timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self._connection.request(method, self._prefix + path, body=body, headers=headers)
            response = self._connection.getresponse()
            data = response.read()
        except (ConnectionResetError, BrokenPipeError):
            self.close()
            raise
        except TimeoutError as exc:
            self.close()
            raise ClientError(
                f"no answer from {self.base_url} within {self.timeout:g} s", code="DEADLINE_EXCEEDED"
            ) from exc
        except ConnectionRefusedError as exc:
            self.close()
            raise ClientError(
                f"cannot connect to {self.base_url} (connection refused): {SERVER_HINT}", code="UNAVAILABLE"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ClientError(f"cannot talk to {self.base_url}: {_one_line(str(exc)) or type(exc).__name__}") from exc
        if response.will_close:
            self.close()
        return response.status, data

    def _call(self, method: str, path: str, payload: dict | None = None) -> Any:
        body = None if payload is None else orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        status, data = self.raw(method, path, body)
        try:
            answer = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            answer = None
        if status >= 400:
            detail = answer.get("error") if isinstance(answer, dict) else None
            code = HTTP_STATUS_CODES.get(status) or http.client.responses.get(status, "ERROR").upper().replace(" ", "_")
            raise _answered(status, code, str(detail) if detail is not None else data.decode(errors="replace"))
        if not isinstance(answer, dict):
            raise ClientError(
                f"{self.base_url}{path} answered {status} with no JSON object: {_one_line(repr(data[:80]))}"
            )
        return answer

    @staticmethod
    def _model_path(model: str, version: int | None, label: str | None) -> str:
        _check_version(version, label)
        path = f"/v1/models/{quote(model, safe='')}"
        if version is not None:
            return f"{path}/versions/{int(version)}"
        return f"{path}/labels/{quote(label, safe='')}" if label is not None else path

    def predict(
        self,
        model: str,
        inputs: Inputs,
        signature: str = TENSOR_SIGNATURE,
        version: int | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one batch through `signature` (row format); return an array per output name."""
        batch = _batch_size(inputs)
        columns = {}
        for name, value in inputs.items():
            if isinstance(value, np.ndarray) and value.dtype.kind not in "OSU":
                columns[name] = list(np.ascontiguousarray(value))  # rows stay numpy; orjson writes them natively
            else:
                columns[name] = [{"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v for v in value]
        instances = [{name: rows[i] for name, rows in columns.items()} for i in range(batch)]
        path = self._model_path(model, version, label)
        answer = self._call("POST", f"{path}:predict", {"signature_name": signature, "instances": instances})
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != batch:
            raise ClientError(f"{self.base_url}{path}:predict answered without {batch} predictions: {list(answer)}")
        dtypes = self._output_dtypes(model, signature, version, label)
        first = predictions[0]
        if isinstance(first, dict) and set(first) != {"b64"}:  # several outputs: one object per instance
            by_name = {name: [row[name] for row in predictions] for name in first}
        elif len(dtypes) == 1:  # one output: TF Serving gives bare values, so its name comes from the metadata
            by_name = {next(iter(dtypes)): predictions}
        else:
            raise ClientError(f"{signature} has outputs {sorted(dtypes)} but the server answered bare values")
        return {name: _to_array(values, dtypes.get(name)) for name, values in by_name.items()}

    def _output_dtypes(self, model: str, signature: str, version: int | None, label: str | None) -> dict[str, Any]:
        key = (model, version, label, signature or TENSOR_SIGNATURE)
        if key not in self._outputs:
            signatures = signature_defs(self.metadata(model, version, label))
            if key[3] not in signatures:
                raise ClientError(f"{model} has no signature {key[3]!r} in its metadata (it has {sorted(signatures)})")
            outputs = signatures[key[3]].get("outputs", {})
            self._outputs[key] = {name: NUMPY_DTYPES.get(info.get("dtype")) for name, info in outputs.items()}
        return self._outputs[key]

    def status(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        """GET the model's version status: {"model_version_status": [{"version", "state", "status"}]}."""
        return self._call("GET", self._model_path(model, version, label))

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        """GET the model's metadata: {"model_spec": ..., "metadata": {"signature_def": ...}} as TF Serving writes it."""
        return self._call("GET", f"{self._model_path(model, version, label)}/metadata")


class GrpcClient:
    """TF Serving's gRPC PredictionService and ModelService through the tensorflow-serving-api stubs."""

    def __init__(self, target: str, timeout: float = 10.0):
        # Imported here: TensorFlow takes seconds to load, and REST users never need it.
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
            ],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _fill_spec(self, spec: Any, model: str, version: int | None, label: str | None) -> None:
        _check_version(version, label)
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = label

    def _invoke(self, method: Any, request: Any) -> Any:
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ClientError(
                    f"no answer from {self.target} within {self.timeout:g} s", code=code.name, detail=detail
                ) from None
            lowered = detail.lower()
            if code == grpc.StatusCode.UNAVAILABLE and any(
                sign in lowered for sign in ("failed to connect", "connection refused", "dns resolution failed")
            ):
                reason = "connection refused" if "refused" in lowered else _one_line(detail, 120)
                raise ClientError(
                    f"cannot connect to {self.target} ({reason}): {SERVER_HINT}", code=code.name, detail=detail
                ) from None
            raise _answered(None, code.name, detail) from None

    def predict(
        self,
        model: str,
        inputs: Inputs,
        signature: str = TENSOR_SIGNATURE,
        version: int | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one batch through `signature`; return an array per output name (strings as bytes)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        _batch_size(inputs)
        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, model, version, label)
        request.model_spec.signature_name = signature
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._invoke(self._predictions.Predict, request)
        return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}

    def status(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        """The model's version status, as the same dict the REST API answers."""
        from tensorflow.core.protobuf import error_codes_pb2
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec, model, version, label)
        response = self._invoke(self._models.GetModelStatus, request)
        return {
            "model_version_status": [
                {
                    "version": str(entry.version),
                    "state": get_model_status_pb2.ModelVersionStatus.State.Name(entry.state),
                    "status": {
                        "error_code": error_codes_pb2.Code.Name(entry.status.error_code),
                        "error_message": entry.status.error_message,
                    },
                }
                for entry in response.model_version_status
            ]
        }

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        """The model's signature_def metadata, unpacked into the same dict the REST API answers."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._fill_spec(request.model_spec, model, version, label)
        request.metadata_field.append("signature_def")
        response = self._invoke(self._predictions.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signatures):
            raise ClientError(f"{self.target} answered metadata without a SignatureDefMap under 'signature_def'")
        return {
            "model_spec": json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True),
            "metadata": {"signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True)},
        }


def top5(outputs: dict[str, np.ndarray], labels: Sequence[str] | None = None) -> list[list[tuple[int, str, float]]]:
    """Per instance, the five best (class index, label, score): predict_images' own, or a softmax of logits."""
    if {"classes", "labels", "scores"} <= outputs.keys():
        rows = []
        for classes, names, scores in zip(outputs["classes"], outputs["labels"], outputs["scores"], strict=True):
            names = [name.decode(errors="replace") if isinstance(name, bytes) else str(name) for name in names]
            rows.append([(int(c), name, float(s)) for c, name, s in zip(classes, names, scores, strict=True)])
        return rows
    if len(outputs) != 1:
        raise ValueError(f"expected predict_images' classes/labels/scores or one logits output, got {sorted(outputs)}")
    logits = np.asarray(next(iter(outputs.values())), dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"expected logits [batch, classes], got shape {logits.shape}")
    if labels is not None and len(labels) != logits.shape[1]:
        raise ValueError(f"{len(labels)} labels for {logits.shape[1]} classes")
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :5]  # ties: lower index first, as tf.math.top_k
    return [
        [(int(c), labels[c] if labels is not None else "", float(p[c])) for c in row]
        for row, p in zip(best, probabilities, strict=True)
    ]


def weights_stated(outputs: dict[str, np.ndarray]) -> list[str] | None:
    """predict_images' `weights` output, per instance: which weights the answer comes from."""
    if "weights" not in outputs:
        return None
    return [w.decode(errors="replace") if isinstance(w, bytes) else str(w) for w in np.ravel(outputs["weights"])]


# The CLI.


def load_labels(path: Path) -> list[str]:
    """Class names from a reference.npz (its `labels` array) or a text file with one name per line."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                found = sorted(archive.files)
                names = [str(name) for name in archive["labels"]] if "labels" in found else None
        else:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read labels from {path}: {_one_line(str(exc))}") from exc
    if names is None:
        raise InputError(f"{path} has no 'labels' array (it has {found})")
    if not names:
        raise InputError(f"{path} holds no labels")
    return names


def load_input(path: Path) -> tuple[str, Inputs]:
    """An image or .npy file as (signature, inputs), checked before anything is sent."""
    suffix = path.suffix.lower()
    if suffix not in (*IMAGE_SUFFIXES, ".npy"):
        raise InputError(f"{path}: expected an image (.jpg, .jpeg, .png) or a tensor (.npy)")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            data = path.read_bytes()
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read {path}: {_one_line(str(exc))}") from exc
    if suffix != ".npy":
        if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n")):
            raise InputError(f"{path} is not a JPEG or PNG image (it starts with {data[:8]!r})")
        return IMAGE_SIGNATURE, {IMAGE_INPUT: [data]}
    if not isinstance(array, np.ndarray):
        array.close()
        raise InputError(f"{path} is an .npz archive; give one array saved with numpy.save")
    if array.dtype.kind != "f" or array.shape[-3:] != (3, 224, 224) or array.ndim not in (3, 4) or array.size == 0:
        raise InputError(
            f"{path} holds {array.dtype} {list(array.shape)}; {TENSOR_SIGNATURE} takes float32 [3, 224, 224] "
            "or [N, 3, 224, 224] (NCHW, normalized)"
        )
    batch = array.reshape(-1, 3, 224, 224).astype(np.float32, copy=False)
    return TENSOR_SIGNATURE, {TENSOR_INPUT: batch}


def _server_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    # Each flag is on the main parser and on every subcommand, so it may stand before or after the
    # subcommand; the subcommands' copies default to SUPPRESS so they never overwrite the main one's value.
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    server = parser.add_mutually_exclusive_group()
    server.add_argument("--rest", metavar="URL", default=default(None), help="REST address, e.g. http://127.0.0.1:8501")
    server.add_argument("--grpc", metavar="HOST:PORT", default=default(None), help="gRPC address, e.g. 127.0.0.1:8500")
    parser.add_argument("--model", default=default(DEFAULT_MODEL), help=f"model name (default {DEFAULT_MODEL})")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--version", type=int, default=default(None), help="a model version (default: the latest)")
    pick.add_argument("--label", default=default(None), help="a model version label, e.g. stable")
    parser.add_argument(
        "--signature",
        default=default(None),
        help=f"signature name (default: {IMAGE_SIGNATURE} for images, {TENSOR_SIGNATURE} for .npy)",
    )
    parser.add_argument("--timeout", type=float, default=default(10.0), help="seconds to wait per call (default 10)")
    parser.add_argument(
        "--labels",
        type=Path,
        default=default(None),
        help="class names for serving_default: reference.npz or a text file",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of a table")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pt2tf-client",
        description="Classify images or tensors with a TF Serving model server, or show its model status and metadata.",
        allow_abbrev=False,
    )
    _server_flags(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{classify,status,metadata}")
    classify = commands.add_parser(
        "classify", help="top-5 classes of image (.jpg/.png) or tensor (.npy) files", allow_abbrev=False
    )
    classify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    commands.add_parser("status", help="the model's version status", allow_abbrev=False)
    commands.add_parser(
        "metadata", help="the model's signatures: inputs and outputs with dtype and shape", allow_abbrev=False
    )
    for command in commands.choices.values():
        _server_flags(command, defaults=False)
    return parser


def _classify(client: RestClient | GrpcClient, args: argparse.Namespace) -> None:
    requests = [(path, *load_input(path)) for path in args.files]  # every file is checked before the first call
    labels = load_labels(args.labels) if args.labels else None
    results = []
    for path, signature, inputs in requests:
        signature = args.signature or signature
        started = time.perf_counter()
        outputs = client.predict(args.model, inputs, signature=signature, version=args.version, label=args.label)
        milliseconds = (time.perf_counter() - started) * 1000
        try:
            rows = top5(outputs, labels)
        except ValueError as exc:
            raise InputError(f"cannot read {signature}'s answer for {path}: {exc}") from exc
        stated = weights_stated(outputs)
        for index, best in enumerate(rows):
            results.append(
                {
                    "file": str(path),
                    "index": index,
                    "batch": len(rows),
                    "signature": signature,
                    "ms": round(milliseconds, 2),
                    "top5": [
                        {"rank": rank, "class": c, "label": name, "score": score}
                        for rank, (c, name, score) in enumerate(best, 1)
                    ],
                    "weights": stated[index] if stated else None,
                }
            )
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        return
    for result in results:
        name = result["file"] if result["batch"] == 1 else f"{result['file']}[{result['index']}]"
        batch = "" if result["batch"] == 1 else f", batch of {result['batch']}"
        print(f"{name}  {result['signature']}  {result['ms']:.1f} ms{batch}")
        print(f"  {'rank':>4}  {'class':>5}  {'score':>8}  label")
        for row in result["top5"]:
            print(f"  {row['rank']:>4}  {row['class']:>5}  {row['score']:>8.4f}  {row['label']}")
        print(f"  weights: {result['weights'] or 'not stated (only predict_images answers say which weights)'}")


def _status(client: RestClient | GrpcClient, args: argparse.Namespace) -> None:
    answer = client.status(args.model, args.version, args.label)
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        return
    for entry in answer.get("model_version_status", []):
        status = entry.get("status", {})
        code = status.get("error_code", "OK")
        message = f"  {status['error_message']}" if status.get("error_message") else ""
        print(f"{args.model}  version {entry.get('version')}  {entry.get('state')}  {code}{message}")


def _metadata(client: RestClient | GrpcClient, args: argparse.Namespace) -> None:
    answer = client.metadata(args.model, args.version, args.label)
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        return
    spec = answer.get("model_spec", {})
    print(f"{spec.get('name', args.model)}  version {spec.get('version')}")
    for name, signature in sorted(signature_defs(answer).items()):
        method = signature.get("method_name")
        print(f"signature {name}" + (f"  ({method})" if method else ""))
        for side in ("inputs", "outputs"):
            for tensor, info in sorted(signature.get(side, {}).items()):
                shape = tensor_shape(info)
                shown = "unknown rank" if shape is None else str(shape)
                print(f"  {side[:-1]:<6}  {tensor:<14}  {info.get('dtype', '?'):<10}  {shown}")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr muted: CUDA builds log plugin notices at import, before any log level applies."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
            import tensorflow_serving.apis.predict_pb2  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pt2tf-client`; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.rest is None) == (args.grpc is None):
        parser.error("give the server as one of --rest http://127.0.0.1:8501 or --grpc 127.0.0.1:8500")
    if args.version is not None and args.label is not None:
        parser.error("give --version or --label, not both")
    # The CLI runs no TensorFlow op, only its proto helpers: TensorFlow's start-up notices (oneDNN, CPU
    # features) stay off stderr, where an error must stay one line, because the import runs with stderr
    # muted. No environment variable is changed: main() also runs inside other programs (the tests), and
    # TF_ENABLE_ONEDNN_OPTS=0 there would silently turn off oneDNN (and bf16) in every server they start.
    if args.grpc is not None:
        _import_tensorflow_quietly()
    run = {"classify": _classify, "status": _status, "metadata": _metadata}[args.command]
    try:
        client = RestClient(args.rest, args.timeout) if args.rest is not None else GrpcClient(args.grpc, args.timeout)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with client:
            run(client, args)
    except (ClientError, InputError) as exc:
        print(f"pt2tf-client: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
