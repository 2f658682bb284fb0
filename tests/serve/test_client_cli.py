"""pt2tf-client against real sockets: nothing listening, a silent listener, a tiny HTTP server, and the model server.

The tests above the `served` line need no model server; the ones below use the session fixture
`served` (tests/serve/conftest.py) that runs the embedded server on the converted model.
"""

from __future__ import annotations

import base64
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
from pt2tf_serve import client
from pt2tf_serve.client import ClientError, GrpcClient, RestClient, main, signature_defs, tensor_shape, top5
from pt2tf_serve.process import free_port

NOT_FOUND_TEXT = "Servable not found for request: Latest(nope)"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def server_flags(protocol: str, address: str) -> list[str]:
    return ["--rest", f"http://{address}"] if protocol == "rest" else ["--grpc", address]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr, checked to be exactly one `pt2tf-client: error:` line."""
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("pt2tf-client: error: ") and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def tensor_file(tmp_path: Path) -> Path:
    path = tmp_path / "tensor.npy"
    np.save(path, np.zeros((3, 224, 224), dtype=np.float32))
    return path


class NotFoundHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request as TF Serving answers an unknown model, and records what it was sent."""

    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's REST server

    def do_GET(self) -> None:
        self.answer(None)

    def do_POST(self) -> None:
        self.answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def answer(self, body: bytes | None) -> None:
        self.server.requests.append((self.command, self.path, body))
        self.server.connections.add(self.client_address)
        payload = orjson.dumps({"error": NOT_FOUND_TEXT})
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        # Dropping the connection without a `Connection: close` header is what an idle timeout looks like.
        self.close_connection = self.server.drop_connections

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_found_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler)
    server.requests, server.connections, server.drop_connections = [], set(), False
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def silent_address():
    """A socket that accepts connections (the kernel completes them) but never reads or answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("command", ["status", "metadata", "classify"])
def test_server_down_is_one_line_naming_the_address(protocol, command, tensor_file, capsys):
    address = f"127.0.0.1:{free_port()}"
    argv = [*server_flags(protocol, address), command] + ([str(tensor_file)] if command == "classify" else [])
    assert main(argv) == 1
    line = error_line(capsys)
    assert address in line
    assert "connection refused" in line and "is the server running? (make serve)" in line


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_server_down_from_a_shell_prints_only_the_error(protocol):
    # A real process: TensorFlow's own start-up log would land on the same stderr.
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(Path(client.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "pt2tf_serve.client", *server_flags(protocol, address), "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"pt2tf-client: error: cannot connect to {'http://' if protocol == 'rest' else ''}{address} "
        "(connection refused): is the server running? (make serve)"
    ]


def test_error_answer_carries_status_code_and_server_text(not_found_server):
    with RestClient(not_found_server.url) as rest, pytest.raises(ClientError) as raised:
        rest.status("nope")
    error = raised.value
    assert (error.status, error.code, error.detail) == (404, "NOT_FOUND", NOT_FOUND_TEXT)
    assert str(error) == f"server answered 404 NOT_FOUND: {NOT_FOUND_TEXT}"


def test_error_answer_in_the_cli(not_found_server, tensor_file, capsys):
    assert main(["--rest", not_found_server.url, "--model", "nope", "classify", str(tensor_file)]) == 1
    assert error_line(capsys) == f"pt2tf-client: error: server answered 404 NOT_FOUND: {NOT_FOUND_TEXT}"


def test_requests_are_tf_serving_paths_and_row_format(not_found_server):
    image = PNG_MAGIC + bytes(range(256))
    tensor = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    with RestClient(not_found_server.url) as rest:
        for call in (
            lambda: rest.status("nope"),
            lambda: rest.metadata("nope", version=3),
            lambda: rest.predict("nope", {"image_bytes": [image]}, signature="predict_images", label="canary"),
            lambda: rest.predict("nope", {"input": tensor}, version=7),
        ):
            with pytest.raises(ClientError):
                call()
    (_, status, _), (_, metadata, _), (_, images, image_body), (_, tensors, tensor_body) = not_found_server.requests
    assert [status, metadata, images, tensors] == [
        "/v1/models/nope",
        "/v1/models/nope/versions/3/metadata",
        "/v1/models/nope/labels/canary:predict",
        "/v1/models/nope/versions/7:predict",
    ]
    assert orjson.loads(image_body) == {
        "signature_name": "predict_images",
        "instances": [{"image_bytes": {"b64": base64.b64encode(image).decode()}}],
    }
    sent = orjson.loads(tensor_body)
    assert sent["signature_name"] == "serving_default"
    # Row format, and float32 values that survive the trip through JSON bit for bit.
    np.testing.assert_array_equal(np.asarray([row["input"] for row in sent["instances"]], dtype=np.float32), tensor)


def test_keep_alive_connection_is_reused_and_reopened_when_dropped(not_found_server):
    with RestClient(not_found_server.url) as rest:
        for _ in range(3):
            assert rest.raw("GET", "/v1/models/nope")[0] == 404
        assert len(not_found_server.connections) == 1
        not_found_server.drop_connections = True
        for _ in range(3):
            with pytest.raises(ClientError, match="404 NOT_FOUND"):
                rest.status("nope")
    assert len(not_found_server.connections) >= 3


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_silent_server_times_out(protocol, silent_address, capsys):
    assert main([*server_flags(protocol, silent_address), "--timeout", "0.5", "status"]) == 1
    line = error_line(capsys)
    prefix = "http://" if protocol == "rest" else ""
    assert line == f"pt2tf-client: error: no answer from {prefix}{silent_address} within 0.5 s"


def test_silent_server_timeout_in_the_library(silent_address):
    with RestClient(f"http://{silent_address}", timeout=0.3) as rest, pytest.raises(ClientError) as raised:
        rest.predict("resnet18", {"input": np.zeros((1, 3, 224, 224), np.float32)})
    assert raised.value.code == "DEADLINE_EXCEEDED" and "within 0.3 s" in str(raised.value)


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files the CLI must refuse, each with a piece of the message it must give."""
    wrong_shape = tmp_path / "wrong_shape.npy"
    np.save(wrong_shape, np.zeros((3, 224, 225), dtype=np.float32))
    nhwc = tmp_path / "nhwc.npy"
    np.save(nhwc, np.zeros((2, 224, 224, 3), dtype=np.float32))
    integers = tmp_path / "integers.npy"
    np.save(integers, np.zeros((3, 224, 224), dtype=np.int64))
    not_numpy = tmp_path / "not_numpy.npy"
    not_numpy.write_text("hello")
    not_image = tmp_path / "not_image.jpg"
    not_image.write_text("this is a text file")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    other = tmp_path / "tensor.txt"
    other.write_text("1 2 3")
    return {
        "wrong shape": (wrong_shape, "float32 [3, 224, 225]; serving_default takes float32 [3, 224, 224]"),
        "channels last": (nhwc, "[2, 224, 224, 3]"),
        "integers": (integers, "int64 [3, 224, 224]"),
        "not numpy": (not_numpy, f"cannot read {not_numpy}"),
        "not an image": (not_image, "is not a JPEG or PNG image"),
        "empty image": (empty, "is not a JPEG or PNG image"),
        "unknown kind": (other, "expected an image (.jpg, .jpeg, .png) or a tensor (.npy)"),
        "missing": (tmp_path / "missing.png", "No such file"),
    }


@pytest.mark.parametrize(
    "case",
    ["wrong shape", "channels last", "integers", "not numpy", "not an image", "empty image", "unknown kind", "missing"],
)
def test_bad_input_file_fails_before_any_request(case, not_found_server, tensor_file, tmp_path, capsys):
    path, message = bad_inputs(tmp_path)[case]
    # The good file comes first: every file is checked before the first request.
    assert main(["--rest", not_found_server.url, "classify", str(tensor_file), str(path)]) == 1
    line = error_line(capsys)
    assert str(path) in line and message in line
    assert not_found_server.requests == []


def test_unreadable_labels_fail_before_any_request(not_found_server, tensor_file, tmp_path, capsys):
    archive = tmp_path / "no_labels.npz"
    np.savez(archive, names=np.array(["a", "b"]))
    assert main(["--rest", not_found_server.url, "classify", str(tensor_file), "--labels", str(archive)]) == 1
    assert "has no 'labels' array (it has ['names'])" in error_line(capsys)
    assert not_found_server.requests == []


def test_server_flag_is_required(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["status"])
    assert raised.value.code == 2
    assert "--rest http://127.0.0.1:8501 or --grpc 127.0.0.1:8500" in capsys.readouterr().err


def test_top5_of_logits_is_a_softmax_ranking():
    logits = np.zeros((2, 1000), dtype=np.float32)
    logits[0, [7, 3, 500, 999, 0]] = [10, 9, 8, 7, 6]
    logits[1, [42, 41, 40]] = 5  # a three-way tie ranks by class index, as tf.math.top_k does
    names = [f"class-{i}" for i in range(1000)]
    first, second = top5({"output": logits}, names)
    assert [c for c, _, _ in first] == [7, 3, 500, 999, 0]
    assert [name for _, name, _ in first] == ["class-7", "class-3", "class-500", "class-999", "class-0"]
    expected = np.exp(np.float64(logits[0])) / np.exp(np.float64(logits[0])).sum()
    np.testing.assert_allclose([s for _, _, s in first], expected[[7, 3, 500, 999, 0]], rtol=1e-12)
    assert [c for c, _, _ in second] == [40, 41, 42, 0, 1]
    assert [name for _, name, _ in top5({"output": logits})[0]] == [""] * 5
    with pytest.raises(ValueError, match="999 labels for 1000 classes"):
        top5({"output": logits}, names[:-1])


def test_top5_of_predict_images_uses_the_models_own_answer():
    outputs = {
        "probabilities": np.full((1, 1000), 0.001, dtype=np.float32),
        "classes": np.array([[9, 8, 7, 6, 5]], dtype=np.int32),
        "labels": np.array([[b"ostrich", b"hen", b"cock", b"stingray", b"electric ray"]], dtype=object),
        "scores": np.array([[0.5, 0.2, 0.1, 0.05, 0.01]], dtype=np.float32),
    }
    (rows,) = top5(outputs, labels=["ignored"] * 1000)
    assert rows[0] == (9, "ostrich", pytest.approx(0.5))
    assert [name for _, name, _ in rows] == ["ostrich", "hen", "cock", "stingray", "electric ray"]


# Against the model server: the session fixture `served` runs it on the converted ResNet18.


def photo(reference: dict, index: int) -> bytes:
    offsets = reference["photo_offsets"]
    return reference["photo_bytes"][offsets[index] : offsets[index + 1]].tobytes()


def first_jpeg(reference: dict) -> bytes:
    photos = [photo(reference, i) for i in range(len(reference["photo_offsets"]) - 1)]
    return next(data for data in photos if data.startswith(b"\xff\xd8\xff"))


def cli_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return orjson.loads(capsys.readouterr().out)


def served_flags(served, protocol: str) -> list[str]:
    address = served.rest_url if protocol == "rest" else served.grpc_target
    return ["--rest" if protocol == "rest" else "--grpc", address, "--model", served.model_name]


def test_served_classify_agrees_over_rest_and_grpc(served, tmp_path, capsys):
    reference = served.reference
    labels = [str(name) for name in reference["labels"]]
    image = tmp_path / "photo.jpg"
    image.write_bytes(first_jpeg(reference))
    tensors = tmp_path / "tensors.npy"
    rows = [0, len(reference["inputs"]) - 1]  # a random tensor and a preprocessed photo
    np.save(tensors, reference["inputs"][rows])
    names = tmp_path / "imagenet.txt"
    names.write_text("\n".join(labels) + "\n")

    answers = {
        protocol: cli_json(
            capsys, [*served_flags(served, protocol), "classify", str(image), str(tensors), "--labels", str(names)]
        )
        for protocol in ("rest", "grpc")
    }
    for answer in answers.values():
        assert [(r["file"], r["index"], r["signature"]) for r in answer] == [
            (str(image), 0, "predict_images"),
            (str(tensors), 0, "serving_default"),
            (str(tensors), 1, "serving_default"),
        ]
        for result in answer:
            assert [row["rank"] for row in result["top5"]] == [1, 2, 3, 4, 5]
            assert [row["label"] for row in result["top5"]] == [labels[row["class"]] for row in result["top5"]]
            assert result["ms"] > 0
        tensor_top1 = [result["top5"][0]["class"] for result in answer[1:]]
        assert tensor_top1 == [int(np.argmax(reference["logits"][row])) for row in rows]
        # predict_images answers say which weights they come from; serving_default's logits cannot.
        assert answer[0]["weights"].startswith("seeded weights: labels are not ImageNet predictions")
        assert [result["weights"] for result in answer[1:]] == [None, None]
    assert main([*served_flags(served, "grpc"), "classify", str(image)]) == 0
    assert "  weights: seeded weights: labels are not ImageNet predictions (seed 0)" in capsys.readouterr().out
    for rest, grpc in zip(answers["rest"], answers["grpc"], strict=True):
        assert [row["class"] for row in rest["top5"]] == [row["class"] for row in grpc["top5"]]
        np.testing.assert_allclose(
            [row["score"] for row in rest["top5"]], [row["score"] for row in grpc["top5"]], rtol=1e-4, atol=1e-6
        )


def test_served_predict_gives_the_same_arrays_over_rest_and_grpc(served):
    reference = served.reference
    batch = reference["inputs"][:3]
    image = first_jpeg(reference)
    with RestClient(served.rest_url) as rest, GrpcClient(served.grpc_target) as grpc:
        answers = [
            (
                c.predict(served.model_name, {"input": batch}),
                c.predict(served.model_name, {"image_bytes": [image, image]}, signature="predict_images"),
            )
            for c in (rest, grpc)
        ]
    (rest_logits, rest_images), (grpc_logits, grpc_images) = answers
    assert list(rest_logits) == list(grpc_logits) == ["output"]
    assert rest_logits["output"].dtype == grpc_logits["output"].dtype == np.float32
    assert rest_logits["output"].shape == (3, 1000)
    np.testing.assert_allclose(rest_logits["output"], grpc_logits["output"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rest_logits["output"], reference["logits"][:3], atol=1e-4)
    assert set(rest_images) == set(grpc_images) == {"probabilities", "classes", "labels", "scores", "weights"}
    for name in ("probabilities", "classes", "labels", "scores", "weights"):
        assert rest_images[name].dtype == grpc_images[name].dtype, name
        assert rest_images[name].shape == grpc_images[name].shape, name
    assert rest_images["classes"].dtype == np.int32 and rest_images["labels"].shape == (2, 5)
    np.testing.assert_array_equal(rest_images["classes"], grpc_images["classes"])
    np.testing.assert_array_equal(rest_images["labels"], grpc_images["labels"])
    np.testing.assert_array_equal(rest_images["weights"], grpc_images["weights"])
    assert rest_images["weights"].shape == (2,)
    np.testing.assert_allclose(rest_images["scores"], grpc_images["scores"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_served_status_shows_available(served, protocol, capsys):
    answer = cli_json(capsys, [*served_flags(served, protocol), "status"])
    states = [(entry["state"], entry["status"]["error_code"]) for entry in answer["model_version_status"]]
    assert ("AVAILABLE", "OK") in states
    assert main([*served_flags(served, protocol), "status"]) == 0
    assert "AVAILABLE" in capsys.readouterr().out


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_served_metadata_lists_both_signatures(served, protocol, capsys):
    signatures = signature_defs(cli_json(capsys, [*served_flags(served, protocol), "metadata"]))
    assert {"serving_default", "predict_images"} <= set(signatures)

    def described(name: str, side: str) -> dict[str, tuple[str, list[int] | None]]:
        return {key: (info["dtype"], tensor_shape(info)) for key, info in signatures[name][side].items()}

    assert described("serving_default", "inputs") == {"input": ("DT_FLOAT", [-1, 3, 224, 224])}
    assert described("serving_default", "outputs") == {"output": ("DT_FLOAT", [-1, 1000])}
    assert described("predict_images", "inputs") == {"image_bytes": ("DT_STRING", [-1])}
    assert described("predict_images", "outputs") == {
        "probabilities": ("DT_FLOAT", [-1, 1000]),
        "classes": ("DT_INT32", [-1, 5]),
        "labels": ("DT_STRING", [-1, 5]),
        "scores": ("DT_FLOAT", [-1, 5]),
        "weights": ("DT_STRING", [-1]),
    }
    assert main([*served_flags(served, protocol), "metadata"]) == 0
    printed = capsys.readouterr().out
    assert "signature predict_images" in printed and "signature serving_default" in printed


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_served_unknown_model_is_not_found(served, protocol):
    make = RestClient if protocol == "rest" else GrpcClient
    with make(served.rest_url if protocol == "rest" else served.grpc_target) as c, pytest.raises(ClientError) as raised:
        c.status("nope")
    assert raised.value.code == "NOT_FOUND"
    assert raised.value.status == (404 if protocol == "rest" else None)
