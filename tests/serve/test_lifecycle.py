"""Model lifecycle on the embedded server: version swaps under load, failed loads, config reloads, shutdown.

Each test runs its own server on its own copy of the model repository, so what it does to
versions and config cannot leak into another test. Loading, swapping and unloading a lane's sessions (under load,
and under each platform config) runs on every lane; the reload, polling and shutdown logic, the server's own, on the
default lane only (10–13 s a case).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
import tensorflow as tf
from pt2tf_serve.client import RestClient
from pt2tf_serve.process import ServerProcess, config_copy, embedded_flags
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

MODEL = "resnet18"


def publish(models: Path, source: Path, version: int) -> Path:
    """Drop a version in as convert does: copy beside the versions under a dot-name, then one rename."""
    staging = models / MODEL / f".staging-{version}"
    shutil.copytree(source, staging)
    target = models / MODEL / str(version)
    os.rename(staging, target)
    return target


def statuses(rest: RestClient) -> dict[str, tuple[str, str]]:
    answer = rest.status(MODEL)
    return {s["version"]: (s["state"], s["status"]["error_code"]) for s in answer["model_version_status"]}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class SteadyLoad:
    """Clients sending predictions nonstop over gRPC and REST; every answer is checked and recorded."""

    def __init__(self, server: ServerProcess, tensor: np.ndarray, logits: np.ndarray, photo: bytes, classes):
        self.server, self.tensor, self.logits, self.photo, self.classes = server, tensor, logits, photo, classes
        self.stop = threading.Event()
        self.results: list[tuple[float, str, int | None]] = []  # (time, "ok" or the failure, version)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._grpc, daemon=True) for _ in range(3)]
        self.threads += [threading.Thread(target=self._rest, daemon=True) for _ in range(2)]

    def _record(self, outcome: str, version: int | None) -> None:
        with self.lock:
            self.results.append((time.monotonic(), outcome, version))

    def _grpc(self) -> None:
        with grpc.insecure_channel(self.server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.inputs["input"].CopyFrom(tf.make_tensor_proto(self.tensor))
            while not self.stop.is_set():
                try:
                    response = stub.Predict(request, timeout=60)
                except grpc.RpcError as error:
                    self._record(f"gRPC {error.code().name}: {error.details()}", None)
                    continue
                logits = tf.make_ndarray(response.outputs["output"])
                ok = np.allclose(logits, self.logits, atol=2e-4)
                self._record("ok" if ok else "gRPC wrong answer", response.model_spec.version.value)

    def _rest(self) -> None:
        body = orjson.dumps({"signature_name": "predict_images", "instances": [{"b64": _b64(self.photo)}]})
        with RestClient(self.server.rest_url, timeout=60) as rest:
            while not self.stop.is_set():
                status, data = rest.raw("POST", f"/v1/models/{MODEL}:predict", body)
                answer = orjson.loads(data)
                if status != 200:
                    self._record(f"REST {status}: {answer}", None)
                    continue
                ok = answer["predictions"][0]["classes"] == self.classes
                self._record("ok" if ok else "REST wrong answer", None)

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest.fixture
def own_repository(repository, tmp_path) -> Path:
    """A repository with version 1 only, for one test to change."""
    models = tmp_path / "models"
    shutil.copytree(repository / MODEL / "1", models / MODEL / "1")
    return models


def test_new_version_under_load_fails_no_request_and_a_broken_one_leaves_it_serving(
    own_repository, repository, expected, tmp_path
):
    config = config_copy(tmp_path / "config")
    flags = embedded_flags(config, own_repository, "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0")
    with ServerProcess(flags) as server, RestClient(server.rest_url, timeout=60) as rest:
        assert statuses(rest) == {"1": ("AVAILABLE", "OK")}
        photo_classes = expected.photo_outputs["classes"][0].tolist()
        load = SteadyLoad(server, expected.tensors[:1], expected.logits[:1], expected.photos[0], photo_classes)
        with load:
            wait_for(lambda: len(load.results) >= 10, 120, "the load to get going")
            publish(own_repository, repository / MODEL / "1", 2)
            swapped = wait_for(
                lambda: statuses(rest) == {"2": ("AVAILABLE", "OK"), "1": ("END", "OK")} and time.monotonic(),
                180,
                "version 2 AVAILABLE and version 1 END",
            )
            wait_for(lambda: sum(1 for t, _, _ in load.results if t > swapped) >= 10, 120, "answers after the swap")
        outcomes = Counter(outcome for _, outcome, _ in load.results)
        assert set(outcomes) == {"ok"}, f"failed or wrong answers during the swap: {outcomes}"
        versions = [v for _, _, v in load.results if v is not None]
        assert versions[0] == 1 and versions[-1] == 2
        assert all(v == 2 for t, _, v in load.results if v is not None and t > swapped + 1)

        broken = own_repository / MODEL / ".staging-3"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        os.rename(broken, own_repository / MODEL / "3")
        wait_for(lambda: statuses(rest).get("3", ("",))[0] == "END", 120, "version 3 to fail")
        state = statuses(rest)
        assert state["3"][1] != "OK" and state["2"] == ("AVAILABLE", "OK"), state
        error = next(s for s in rest.status(MODEL)["model_version_status"] if s["version"] == "3")["status"]
        assert error["error_message"], error
        outputs = rest.predict(MODEL, {"input": expected.tensors[:1]})
        np.testing.assert_allclose(outputs["output"], expected.logits[:1], atol=2e-4)


def _model_config(*names: str, base_path: str = "/models/resnet18") -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    return config


@pytest.mark.default_lane_only("ReloadConfig's handling of the model list")
def test_reload_config_over_grpc_adds_and_removes_models(own_repository, expected, tmp_path):
    config = config_copy(tmp_path / "config")
    with (
        ServerProcess(embedded_flags(config, own_repository)) as server,
        grpc.insecure_channel(server.grpc_target) as channel,
    ):
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def predict(name: str):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.inputs["input"].CopyFrom(tf.make_tensor_proto(expected.tensors[:1]))
            return prediction.Predict(request, timeout=60)

        reload = model_management_pb2.ReloadConfigRequest(config=_model_config(MODEL, "second"))
        models.HandleReloadConfigRequest(reload, timeout=300)
        assert predict("second").model_spec.name == "second"
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=_model_config("second")))
        with pytest.raises(grpc.RpcError) as gone:
            predict(MODEL)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert predict("second").model_spec.version.value == 1

        relative = model_management_pb2.ReloadConfigRequest(config=_model_config("x", base_path="models/x"))
        with pytest.raises(grpc.RpcError) as refused:
            models.HandleReloadConfigRequest(relative, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "to have an absolute path or URI" in refused.value.details()
        assert predict("second").model_spec.version.value == 1  # a refused reload changes nothing


@pytest.mark.default_lane_only("the config file's polling")
def test_config_file_is_polled(own_repository, expected, tmp_path):
    config = config_copy(tmp_path / "config")
    flags = embedded_flags(config, own_repository, "--model_config_file_poll_wait_seconds=1")
    with ServerProcess(flags) as server, RestClient(server.rest_url, timeout=60) as rest:
        text = (config / "models.config").read_text().replace(f'name: "{MODEL}"', 'name: "renamed"')
        (config / "models.config.new").write_text(text)
        os.rename(config / "models.config.new", config / "models.config")
        wait_for(lambda: b'"AVAILABLE"' in rest.raw("GET", "/v1/models/renamed")[1], 120, "the renamed model")
        outputs = rest.predict("renamed", {"input": expected.tensors[:1]})
        np.testing.assert_allclose(outputs["output"], expected.logits[:1], atol=2e-4)
        wait_for(lambda: rest.raw("GET", f"/v1/models/{MODEL}")[0] == 404, 60, f"{MODEL} to be gone")


@pytest.mark.default_lane_only("the drain on SIGTERM")
def test_sigterm_finishes_requests_in_flight_then_exits_0(own_repository, expected, tmp_path):
    config = config_copy(tmp_path / "config")
    server = ServerProcess(embedded_flags(config, own_repository)).start()
    try:
        answers: list[int] = []
        batch = np.concatenate([expected.tensors] * 2)  # 16 images: a request that takes a while
        started = threading.Barrier(5)

        body = orjson.dumps({"instances": batch}, option=orjson.OPT_SERIALIZE_NUMPY)

        def call():
            with RestClient(server.rest_url, timeout=120) as rest:
                started.wait()
                answers.append(rest.raw("POST", f"/v1/models/{MODEL}:predict", body)[0])

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        started.wait()
        time.sleep(0.1)  # the requests are on their way: bodies still uploading, or queued, or running
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=300)
        assert server.process.wait(timeout=120) == 0, server.tail()
        assert answers == [200, 200, 200, 200]
        assert "stopping: no new requests" in server.log()
    finally:
        server.close()
    assert not server.log_path.exists(), "close() left the server's log in the temp folder"


@pytest.mark.parametrize("platform", ["platform.config", "platform-bf16.config"])
def test_a_platform_config_file_gives_every_session_its_config(own_repository, expected, tmp_path, platform):
    from pt2tf_convert.bf16 import Bf16Thresholds
    from pt2tf_serve.cpu import cpu_info

    bf16 = platform == "platform-bf16.config"
    config = config_copy(tmp_path / "config")
    flags = embedded_flags(config, own_repository, f"--platform_config_file=/config/{platform}")
    if bf16 and not cpu_info().bf16:  # this CPU (as the server reads it) has no native bf16: refused at start
        _assert_bf16_refused_at_start(flags, cpu_info().model)
        return
    # oneDNN on, whatever the environment the tests run in says (with it off the bf16 rewrite never runs)
    with ServerProcess(flags, env={"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "1"}) as server:
        with RestClient(server.rest_url, timeout=60) as rest:
            served = rest.predict(MODEL, {"input": expected.tensors[:2]})["output"]
        log = server.log()
    difference = np.abs(np.asarray(served) - expected.logits[:2]).max()
    if bf16:  # bf16 really ran in the served Session: off by far more than fp32, within its bound
        assert "Running auto_mixed_precision_onednn_bfloat16 graph optimizer" in log
        bound = Bf16Thresholds().max_rel * np.abs(expected.logits).max()  # the bf16 variant's own bound
        assert 1e-4 < difference <= bound, f"{difference} vs {bound}; server log:\n{log[-3000:]}"
    else:
        assert "auto_mixed_precision" not in log and difference <= 2e-4


def _assert_bf16_refused_at_start(flags: list[str], cpu_model: str, env: dict[str, str] | None = None) -> None:
    server = ServerProcess(flags, env={"TF_ENABLE_ONEDNN_OPTS": "1", **(env or {})})
    try:
        with pytest.raises(RuntimeError, match="exited with") as refused:
            server.start()
    finally:
        server.close()  # had it started after all, it must not outlive the test
    assert "avx512_bf16 or amx_bf16" in str(refused.value) and f"({cpu_model})" in str(refused.value)
    assert not server.log_path.exists(), "a refused start left its log in the temp folder"


def test_a_server_on_a_cpu_without_bf16_refuses_the_bf16_platform_config(own_repository, tmp_path):
    # Whatever this machine is, the server process is shown the recorded AVX2 EPYC (PT2TF_CPUINFO):
    # the refusal branch runs on every machine (the fp32 config is not CPU-dependent: tested above).
    recorded = Path(__file__).resolve().parents[1] / "data" / "cpuinfo" / "amd-epyc-avx2.txt"
    config = config_copy(tmp_path / "config")
    bf16_flags = embedded_flags(config, own_repository, "--platform_config_file=/config/platform-bf16.config")
    _assert_bf16_refused_at_start(bf16_flags, "AMD EPYC", {"PT2TF_CPUINFO": str(recorded)})
