"""The embedded server under abuse: floods, slow and vanishing clients, requests past their timeout.

Each test starts its own server with batching parameters chosen to make the case happen, and
checks that the server answers with TF Serving's codes and goes on serving correct answers.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import orjson
import tensorflow as tf
from pt2tf_serve.client import RestClient
from pt2tf_serve.process import ServerProcess, config_copy, embedded_flags
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODEL = "resnet18"

# One thread runs batches of up to 2 requests; at most 2 batches wait: the queue holds 4 requests.
SMALL_QUEUE = """
max_batch_size { value: 2 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 2 }
num_batch_threads { value: 1 }
"""
QUEUE_HOLDS = 4


def _predict_request(tensor: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["input"].CopyFrom(tf.make_tensor_proto(tensor))
    return request


class MemorySampler:
    """Samples the server's resident memory every 20 ms while it runs; `peak` is the highest seen."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.server.rss_bytes())

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_flood_gets_fast_unavailable_answers_and_the_server_recovers(repository, expected, tmp_path):
    config = config_copy(tmp_path / "config", batching=SMALL_QUEUE)
    with ServerProcess(embedded_flags(config, repository)) as server:
        request = _predict_request(expected.tensors[:1])
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(3):  # settle: memory measured idle, after the first requests
                stub.Predict(request, timeout=60)
            idle = server.rss_bytes()
            callers = 10 * QUEUE_HOLDS
            rest_body = orjson.dumps({"instances": expected.tensors[:1]}, option=orjson.OPT_SERIALIZE_NUMPY)

            def grpc_call(_):
                started = time.monotonic()
                try:
                    stub.Predict(request, timeout=120)
                    return "OK", time.monotonic() - started
                except grpc.RpcError as error:
                    return error.code().name, time.monotonic() - started

            def rest_call(_):
                started = time.monotonic()
                with RestClient(server.rest_url, timeout=120) as rest:
                    status, _ = rest.raw("POST", f"/v1/models/{MODEL}:predict", rest_body)
                return {200: "OK", 503: "UNAVAILABLE"}.get(status, str(status)), time.monotonic() - started

            with MemorySampler(server) as memory, ThreadPoolExecutor(callers) as pool:
                outcomes = []
                for _ in range(3):  # three waves of 40 simultaneous callers, a quarter over REST
                    calls = [pool.submit(rest_call if i % 4 == 0 else grpc_call, i) for i in range(callers)]
                    outcomes += [call.result() for call in calls]
            codes = {code for code, _ in outcomes}
            assert codes <= {"OK", "UNAVAILABLE"}, codes
            refused = [seconds for code, seconds in outcomes if code == "UNAVAILABLE"]
            served = [seconds for code, seconds in outcomes if code == "OK"]
            assert len(refused) >= callers, f"only {len(refused)} of {len(outcomes)} refused: the queue did not fill"
            assert served, "nothing was served during the flood"
            # Refusals come at once, not after waiting for a turn at the model.
            assert statistics.median(refused) < statistics.median(served)
            assert memory.peak < 2 * idle, f"peak {memory.peak >> 20} MiB against {idle >> 20} MiB idle"

            response = stub.Predict(_predict_request(expected.tensors[:2]), timeout=60)
            np.testing.assert_allclose(tf.make_ndarray(response.outputs["output"]), expected.logits[:2], atol=2e-4)
        assert server.process.poll() is None, "the server died"


def test_slow_and_vanishing_clients_cost_nothing_and_time_out(repository, expected, tmp_path):
    config = config_copy(tmp_path / "config")
    flags = embedded_flags(config, repository, "--rest_api_timeout_in_ms=2000")
    with ServerProcess(flags) as server, RestClient(server.rest_url, timeout=60) as rest:
        host, port = "127.0.0.1", server.rest_port
        slow = socket.create_connection((host, port))
        slow.sendall(
            f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{{".encode()
        )
        for _ in range(5):  # a client that connects, sends half a body and disappears
            gone = socket.create_connection((host, port))
            gone.sendall(
                f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n[".encode()
            )
            gone.close()
        with socket.create_connection((host, port)) as garbled:  # not HTTP at all
            garbled.sendall(b"\x00\x01 hello\r\n\r\n")
            status_line = garbled.recv(1024).split(b"\r\n")[0]
            assert b" 400 " in status_line, status_line
        outputs = rest.predict(MODEL, {"input": expected.tensors[:1]})
        np.testing.assert_allclose(outputs["output"], expected.logits[:1], atol=2e-4)
        slow.settimeout(30)
        answer = slow.recv(65536).decode(errors="replace")
        slow.close()
        assert answer.startswith("HTTP/1.1 504"), answer
        assert "rest_api_timeout_in_ms" in answer
        assert "Traceback" not in server.log(), server.tail()


def test_request_waiting_past_the_rest_timeout_is_refused_as_tf_serving_does(repository, expected, tmp_path):
    # Batches wait 5 s to fill; the REST timeout is 1 s: the request times out in the queue.
    batching = "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 5000000 }\nnum_batch_threads { value: 1 }\n"
    config = config_copy(tmp_path / "config", batching=batching)
    flags = embedded_flags(config, repository, "--rest_api_timeout_in_ms=1000", "--enable_model_warmup=false")
    with ServerProcess(flags) as server, RestClient(server.rest_url, timeout=60) as rest:
        body = orjson.dumps({"instances": expected.tensors[:1]}, option=orjson.OPT_SERIALIZE_NUMPY)
        status, data = rest.raw("POST", f"/v1/models/{MODEL}:predict", body)
        assert status == 429, data
        assert orjson.loads(data) == {"error": "Run() timeout exceeded while waiting in batching queue"}
