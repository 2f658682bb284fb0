"""The models matrix's speed stages (pt2tf_convert.model_matrix.measure_speed) on this lane's real converted ResNet18:
`bench` (the Session path beside ONNX Runtime in one process) and `serve` (the embedded server, 16 gRPC callers),
each a process in this lane's env as `nox -s models` runs them; short settings, no timed assertions.

A stage that fails must come back as that stage and its error, and no server may outlive the stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pt2tf_convert.model_matrix import LaneSpec, Speed, chart, measure_speed
from pt2tf_serve import served_rate
from pt2tf_serve.process import DOCKER_CONFIG

MODEL = "resnet18"
SHORT = Speed(
    platform_config=str(DOCKER_CONFIG / "platform.config"),
    batch_sizes=(1, 2),
    rounds=2,
    min_seconds=0.2,
    min_iters=2,
    warmup=1.0,
    seconds=2.0,
)


def _spec(lane) -> LaneSpec:
    return LaneSpec(lane.name, lane.exporter, lane.opset, lane.converter, sys.executable, sys.executable)


def _servers_of(models: Path) -> list[int]:
    """Embedded servers still running on `models` (their command line names it as the /models volume)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not a process
            continue
        if b"pt2tf_serve.server" in argv and f"--volume={models}:/models".encode() in argv:
            found.append(int(entry.name))
    return found


def test_the_speed_stages_measure_the_session_and_the_served_model(lane, artifacts, repository, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(repository / MODEL / "1", models / MODEL / "1")
    record, seconds = measure_speed(MODEL, _spec(lane), artifacts, models, tmp_path / "work", dict(os.environ), SHORT)
    session, served = record["session"], record["served"]
    assert "error" not in session, session
    assert "error" not in served, served
    assert session["best_batch"] in SHORT.batch_sizes and session["onnxruntime_best_batch"] in SHORT.batch_sizes
    assert session["throughput_vs_onnxruntime"] == pytest.approx(
        session["images_per_second"] / session["onnxruntime_images_per_second"]
    )
    assert session["batch1_latency_vs_onnxruntime"] == pytest.approx(
        session["batch1_latency_ms"] / session["onnxruntime_batch1_latency_ms"]
    )
    assert len(session["rounds_images_per_second"]) == SHORT.rounds
    assert (served["callers"], served["failures"]) == (16, 0)
    assert served["requests"] > 0 and served["images_per_second"] > 0
    assert served["mean_processed_batch"] >= 1.0, "docker/config's batching was on"
    assert set(seconds) == {"bench", "serve"}
    assert record["settings"]["callers"] == 16
    assert _servers_of(models) == [], "the serve stage left its server running"


def _batches_served(pid: int) -> float:
    """Batches the embedded server `pid` has run so far, from its Prometheus page (its REST port: the last in its
    argv, the free port ServerProcess appends after docker/config's)."""
    from pt2tf_serve.metrics import PROCESSED_BATCH_SIZE, fetch_page

    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    port = [arg.removeprefix("--rest_api_port=") for arg in argv if arg.startswith("--rest_api_port=")][-1]
    try:
        return fetch_page(f"http://127.0.0.1:{port}").get(PROCESSED_BATCH_SIZE + "_count{}", 0.0)
    except OSError:  # not listening yet
        return 0.0


@pytest.mark.parametrize("stopped", ["server", "served_rate"])
@pytest.mark.default_lane_only("served_rate's retries")  # its own logic: ~40 s a case, worth one lane's time
def test_a_measurement_during_which_a_process_was_stopped_is_taken_again(stopped, artifacts, repository, tmp_path):
    # On a shared machine a process may be SIGSTOPped for minutes; in-flight calls then outlive their deadline. Here
    # the stop (8 s, longer than served_rate.STALL_S) outlasts the deadline (6 s: 16 callers of one image each wait
    # about 1 s on the AVX2 kind, ~17 img/s) and the measured window (6 s): counted, that measurement would fail the
    # stage with the stop's DEADLINE_EXCEEDED, and its rate would be the stop's.
    models = tmp_path / "models"
    shutil.copytree(repository / MODEL / "1", models / MODEL / "1")
    out = tmp_path / "served.json"
    argv = [sys.executable, "-m", "pt2tf_serve.served_rate", "--models", str(models), "--model", MODEL]
    argv += ["--artifacts", str(artifacts), "--warmup", "1", "--seconds", "6", "--deadline", "6", "--out", str(out)]
    rate = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    target = None
    try:
        deadline = time.monotonic() + 600
        while target is None and rate.poll() is None and time.monotonic() < deadline:
            servers = _servers_of(models)
            if servers and _batches_served(servers[0]) > 0:  # under load
                target = servers[0] if stopped == "server" else rate.pid
            else:
                time.sleep(0.2)
        assert target is not None, "no load seen on the server: " + (
            rate.communicate()[1] if rate.poll() is not None else "served_rate still running"
        )
        os.kill(target, signal.SIGSTOP)
        time.sleep(8)
        os.kill(target, signal.SIGCONT)
        _, stderr = rate.communicate(timeout=600)
    finally:
        if target is not None:
            with contextlib.suppress(ProcessLookupError):  # gone already: served_rate stopped its server
                os.kill(target, signal.SIGCONT)
        if rate.poll() is None:
            rate.terminate()  # served_rate stops its server on SIGTERM
            rate.communicate(timeout=120)
    assert rate.returncode == 0, stderr
    assert "measurement 1 of at most 3 discarded: this process or the server was stopped for" in stderr
    figure = json.loads(out.read_text())
    assert figure["discarded_stopped_measurements"] == 1
    assert figure["failures"] == 0 and figure["requests"] > 0
    assert _servers_of(models) == [], "served_rate left its server running"


def test_a_stop_that_ends_as_the_measurement_does_is_still_seen(monkeypatch):
    # A CI run: served_rate was stopped 8 s during its warm-up; on SIGCONT its window was over and the `with` ended
    # before the sampling thread ticked again, so the stop went unseen and its deadline failures failed the run.
    # Here the thread never ticks (an hour's interval) and the stop is the 10 s since the last tick.
    monkeypatch.setattr(served_rate, "TICK_S", 3600.0)
    with served_rate.Stops(os.getpid()) as stops:
        stops._last -= 10.0
    assert stops.seconds >= 10.0


@pytest.mark.default_lane_only("how a stage's failure is recorded")  # 7–10 s a lane
def test_failing_speed_stages_are_recorded_with_their_errors(lane, artifacts, tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    record, _ = measure_speed(MODEL, _spec(lane), artifacts, empty, tmp_path / "work", dict(os.environ), SHORT)
    assert record["session"] == {
        "stage": "bench",
        "error": f"{empty / MODEL} has no model version — run the convert stage first",
    }
    assert record["served"] == {
        "stage": "serve",
        "error": f"no model version under {empty / MODEL}: convert {MODEL} into {empty} first",
    }


@pytest.mark.default_lane_only("a server that cannot start")  # 11–21 s a lane
def test_a_server_that_cannot_serve_the_model_fails_the_serve_stage_and_is_stopped(lane, artifacts, tmp_path):
    models = tmp_path / "models"
    (models / MODEL / "1").mkdir(parents=True)
    (models / MODEL / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    record, _ = measure_speed(MODEL, _spec(lane), artifacts, models, tmp_path / "work", dict(os.environ), SHORT)
    assert record["served"]["stage"] == "serve", record
    assert record["served"]["error"].startswith("pt2tf-serve exited with 1 before it was ready: "), record
    assert "resnet18" in record["served"]["error"], "the error names the model the server could not load"
    assert record["session"]["stage"] == "bench", record
    assert _servers_of(models) == [], "the serve stage left its server running"


RECORDED = Path(__file__).parents[1] / "data" / "models" / "results.json"


def test_the_chart_is_drawn_from_a_recorded_matrix_in_this_env(tmp_path):
    png, caption = chart(RECORDED, sys.executable, tmp_path, dict(os.environ))
    assert png is not None, caption
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert caption.startswith("Per model and lane: parity")
    empty = tmp_path / "empty.json"
    empty.write_text('{"cpu": "x", "cells": []}')
    assert chart(empty, sys.executable, tmp_path, dict(os.environ)) == (
        None,
        f"No chart: pt2tf_convert.matrix_chart failed: {empty} holds no cells: nothing to draw",
    )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--callers", "0", "argument --callers: 0: must be above 0"),
        ("--seconds", "-1", "argument --seconds: -1: must be above 0"),
        ("--callers", "many", "argument --callers: invalid int value: 'many'"),
        ("--warmup", "-2", "--warmup -2: must be 0 or more seconds"),
    ],
)
def test_served_rate_refuses_a_load_that_measures_nothing(flag, value, message, tmp_path, capsys):
    argv = ["--models", str(tmp_path), "--model", MODEL, "--artifacts", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exited:
        served_rate.main([*argv, flag, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
