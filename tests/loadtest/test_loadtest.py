"""The load test's machinery end to end, in seconds per step: real Locust, real servers, the real gate.

It checks what the runner does — steps measured, batching proven from the server's metrics,
wrong answers counted as failures, the gate passing and failing, the report written — not how
fast this machine is. nox passes a fresh export and conversion of the default lane
(PT2TF_TEST_ARTIFACTS, PT2TF_TEST_MODELS) and the python of the lane's env, which runs the
embedded server (PT2TF_SERVE_PYTHON).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pt2tf_loadtest import rollout, runner, slo
from pt2tf_loadtest.inputs import load_inputs
from pt2tf_loadtest.users import TARGET
from pt2tf_serve.client import GrpcClient
from pt2tf_serve.cpu import cpu_info
from pt2tf_serve.process import (
    ServerProcess,
    Spawned,
    config_copy,
    embedded_flags,
    process_state,
    run_spawned,
)

MODEL = "resnet18"
LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"
REPOSITORY_SLO = Path(__file__).resolve().parents[2] / "loadtest" / "slo.toml"
REPOSITORY_CONFIG = Path(__file__).resolve().parents[2] / "docker" / "config"
QUICK = ["--concurrency", "1,4", "--warmup", "1", "--seconds", "3"]
LENIENT = """
[defaults]
concurrency = 4
p99_ms = 60000
min_images_per_second = 0.5
max_failure_ratio = 0.0
min_batching_gain = 0.1
tolerance = 0.9
# The p99 of a 3 s step at 4 users is its third-slowest request: one scheduling stall on a shared
# machine moved an A/A run's candidate p99 ÷ current to 2.92× in CI, and a rollout canary's 3 s p99 to
# 8× (a 1.4 s stall). Steps this short judge the gate's mechanics, not a tail: only a candidate two
# orders of magnitude slower misses here. slo.toml's bound rests on 15 s steps and interleaved rounds.
tail_tolerance = 99.0
"""


def _env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this suite through nox (nox -s 'tests(loadtest)')")
    return Path(value)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    return _env("PT2TF_TEST_ARTIFACTS")


@pytest.fixture(scope="module")
def serve_python() -> Path:
    return _env("PT2TF_SERVE_PYTHON")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The converted repository with a second version (a copy), for candidate vs current."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(_env("PT2TF_TEST_MODELS") / MODEL / "1", models / MODEL / "1")
    shutil.copytree(models / MODEL / "1", models / MODEL / "2")
    return models


def slo_file(tmp_path: Path, text: str = LENIENT) -> Path:
    path = tmp_path / "slo.toml"
    path.write_text(text)
    return path


def run(args: list[str]) -> int:
    return runner.main([str(a) for a in args])


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_sweep_with_batching_off_and_on_passes_a_met_gate_and_writes_the_report(
    artifacts, models, serve_python, tmp_path, capsys
):
    out = tmp_path / "report"
    compare = ["--current", "1", "--candidate", "2", "--rounds", "1"]
    code = run(["--artifacts", artifacts, "--models", models, "--serve-python", serve_python, "--out", out,
                "--slo", slo_file(tmp_path), *compare, *QUICK])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "VERDICT: ready to roll out" in printed
    found = results(out)
    steps = found["steps"]
    assert {(s["scenario"], s["batching"], s["concurrency"]) for s in steps} == {
        (scenario, batching, c)
        for scenario in ("grpc-tensor", "rest-image")
        for batching in ("off", "on")
        for c in (1, 4)
    }
    assert all(s["failures"] == 0 and s["requests"] > 0 for s in steps)
    # Locust keeps response times rounded to two significant digits, so a percentile may pass the max a little.
    odd = [
        (s["p50_ms"], s["p99_ms"], s["max_ms"])
        for s in steps
        if not s["p50_ms"] <= s["p99_ms"] <= 1.05 * s["max_ms"] + 1
    ]
    assert not odd, f"(p50, p99, max) out of order: {odd}"
    assert all(s["batches"] == {} for s in steps if s["batching"] == "off")
    # With batching on, 4 concurrent callers — gRPC ones under gevent included — share batches.
    for scenario in ("grpc-tensor", "rest-image"):
        on = next(s for s in steps if s["batching"] == "on" and s["concurrency"] == 4 and s["scenario"] == scenario)
        assert any(size != "1" for size in on["batches"]), on["batches"]
    assert {c["label"] for c in found["comparison"]} == {"current=1", "candidate=2"}
    objectives = {v["objective"] for v in found["verdicts"]}
    assert {"p99 latency", "throughput", "failure ratio", "batching gain (on ÷ off)"} <= objectives
    assert {"candidate throughput ÷ current", "candidate p99 ÷ current"} <= objectives
    for name in ("summary.md", "report.html", "steps.csv"):
        assert (out / name).stat().st_size > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "VERDICT" in html
    # The report says whose answers were served: seeded labels are not ImageNet predictions.
    assert "seeded weights: labels are not ImageNet predictions (seed 0)" in (out / "summary.md").read_text()


def test_a_missed_objective_fails_the_gate_naming_it_and_its_value(artifacts, models, serve_python, tmp_path, capsys):
    strict = LENIENT.replace("min_images_per_second = 0.5", "min_images_per_second = 1000000")
    code = run(["--artifacts", artifacts, "--models", models, "--serve-python", serve_python, "--out",
                tmp_path / "report", "--slo", slo_file(tmp_path, strict), "--batching", "on",
                "--scenarios", "grpc-tensor", *QUICK])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 1
    assert "VERDICT: not yet" in printed
    line = next(line for line in printed.splitlines() if "throughput" in line and "wanted" in line)
    assert "img/s" in line and "1e+06" in line, line


def test_the_same_runner_measures_any_running_server(artifacts, models, serve_python, tmp_path, capsys):
    config = config_copy(tmp_path / "config")
    with ServerProcess(embedded_flags(config, models), python=str(serve_python)) as server:
        code = run(["--artifacts", artifacts, "--rest", server.rest_url, "--grpc", server.grpc_target, "--out",
                    tmp_path / "report", "--slo", slo_file(tmp_path), "--scenarios", "grpc-image,rest-tensor",
                    *QUICK])  # fmt: skip
    assert code == 0, capsys.readouterr().out
    steps = results(tmp_path / "report")["steps"]
    assert {s["batching"] for s in steps} == {"as configured"}
    assert {s["scenario"] for s in steps} == {"grpc-image", "rest-tensor"}
    assert all(s["failures"] == 0 for s in steps)


def test_wrong_answers_count_as_failures(artifacts, models, serve_python, tmp_path):
    inputs = load_inputs(artifacts)
    wrong = [dataclasses.replace(p, expected_class=(p.expected_class + 1) % 1000) for p in inputs.tensors]
    wrong_images = [dataclasses.replace(p, expected_class=(p.expected_class + 1) % 1000) for p in inputs.images]
    config = config_copy(tmp_path / "config")
    with ServerProcess(embedded_flags(config, models), python=str(serve_python)) as server:
        # Every field the steps read, set here: run alone, no test before this one has set the served model.
        TARGET.grpc, TARGET.model = server.grpc_target, MODEL
        TARGET.inputs = dataclasses.replace(inputs, tensors=wrong, images=wrong_images)
        try:
            for scenario in ("grpc-tensor", "rest-image"):
                step = runner.run_step(scenario, 2, 0.5, 2.0, server.rest_url, "on")
                assert step.requests > 0 and step.failures == step.requests, step
                assert any("in-process answer" in example for example in step.failure_examples), step
        finally:
            TARGET.inputs = None


def test_bad_slo_file_and_arguments_are_refused_with_a_clear_error(artifacts, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(["--artifacts", artifacts, "--out", tmp_path, "--rest", "http://127.0.0.1:1", "--grpc", "127.0.0.1:1",
             "--slo", slo_file(tmp_path, "[defaults]\nconcurrency = 4\n")])  # fmt: skip
    assert "lacks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["--artifacts", artifacts, "--out", tmp_path, "--rest", "http://127.0.0.1:1"])
    assert "give both --rest and --grpc" in capsys.readouterr().err
    server = ["--artifacts", artifacts, "--out", tmp_path, "--rest", "http://127.0.0.1:1", "--grpc", "127.0.0.1:1"]
    for bad, said in ((["--search-fractions", "0.5,-1"], "must be positive"),
                      (["--windows", "7"], "need 1 ≤ windows (7) ≤ max_windows (6)"),
                      (["--search-fractions", "half"], "--search-fractions")):  # fmt: skip
        with pytest.raises(SystemExit):
            run([*server, "--slo", slo_file(tmp_path), "--search", *bad])
        assert said in capsys.readouterr().err, bad


def test_locust_command_line_in_distributed_mode_uses_the_same_users(artifacts, models, serve_python, tmp_path):
    locust = Path(sys.executable).with_name("locust")
    config = config_copy(tmp_path / "config")
    with ServerProcess(embedded_flags(config, models), python=str(serve_python)) as server:
        done = run_spawned(
            [str(locust), "-f", str(LOCUSTFILE), "--headless", "--processes", "2", "-u", "4", "-r", "4", "-t", "6s",
             "--host", server.rest_url, "--grpc-target", server.grpc_target, "--artifacts", str(artifacts),
             "--csv", str(tmp_path / "cli"), "GrpcTensorUser", "RestImageUser"],
            timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "cli_stats.csv").open()))
    by_name = {row["Name"]: row for row in rows}
    assert int(by_name["Predict serving_default"]["Request Count"]) > 0
    assert int(by_name[":predict predict_images"]["Request Count"]) > 0
    assert all(int(row["Failure Count"]) == 0 for row in rows), rows


@pytest.mark.parametrize("name", ["slo.toml", "slo-absolute.toml"])
def test_the_repositorys_slo_files_cover_every_scenario(name):
    from pt2tf_loadtest.users import USERS

    loaded = slo.load(REPOSITORY_SLO.with_name(name), list(USERS))
    assert set(loaded.objectives) == set(USERS)
    assert all(o.concurrency in runner.PROFILES["default"][0] for o in loaded.objectives.values())
    # The default judges the deployment against this machine; the absolute file needs no measurement.
    assert loaded.relative == (name == "slo.toml")


def test_candidate_throughput_and_tail_are_bounded_apart(tmp_path):
    """tail_tolerance bounds candidate p99 ÷ current on its own; without it, tolerance bounds both."""
    from types import SimpleNamespace

    def step(label, rate, p99):
        return SimpleNamespace(scenario="grpc-tensor", label=label, images_per_second=rate, p99_ms=p99,
                               failures=0, requests=100)  # fmt: skip

    def judged(extra: str) -> dict[str, bool]:
        text = "[defaults]\nconcurrency = 4\np99_ms = 1000\nmin_images_per_second = 1\nmax_failure_ratio = 0\n"
        text += "min_batching_gain = 0.5\ntolerance = 0.2\n" + extra
        loaded = slo.load(slo_file(tmp_path, text), ["grpc-tensor"])
        comparison = [step("current=1", 50.0, 100.0), step("candidate=2", 45.0, 250.0)]
        return {v.objective: v.ok for v in slo._comparison("here", "grpc-tensor", loaded.objective("grpc-tensor"),
                                                             comparison)}  # fmt: skip

    assert judged("") == {"candidate failure ratio": True, "candidate throughput ÷ current": True,
                          "candidate p99 ÷ current": False}  # fmt: skip
    assert judged("tail_tolerance = 2.0\n")["candidate p99 ÷ current"] is True
    assert judged("tail_tolerance = 1.0\n")["candidate p99 ÷ current"] is False


# ---------------------------------------------------------------------------- the default, relative gate
#
# The repository's own slo.toml, judged against the capacity measured once on this machine: a healthy
# deployment passes, and each degraded one fails naming the objective it misses, on every CPU kind
# (the degradations are scaled to the machine's own measured figures, never to fixed numbers).

GATE_USERS = 16  # where the repository's objectives apply (slo.toml's concurrency)


@pytest.fixture(scope="module")
def capacity_file(artifacts, models, serve_python, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("capacity") / "capacity.json"
    measured = runner.measure_capacity(serve_python, artifacts, models / MODEL, out)
    assert set(measured.signatures) == {"serving_default", "predict_images"}
    for own in measured.signatures.values():
        assert own.batch_1_ms > 0 and set(own.images_per_second) == {1, 4, 8, 16, 32}  # docker/config: ≤ 32 rows
    return out


def gate_run(artifacts, models, serve_python, capacity_file, out: Path, *extra, seconds: float = 4.0) -> int:
    return run(["--artifacts", artifacts, "--models", models, "--serve-python", serve_python, "--out", out,
                "--capacity", capacity_file, "--scenarios", "grpc-tensor", "--concurrency", GATE_USERS,
                "--warmup", 2, "--seconds", seconds, *extra])  # fmt: skip


SPEED_OBJECTIVES = {"throughput ÷ in-process capacity", "p99 latency ÷ in-process latency"}


def missed(out: Path) -> set[str]:
    return {v["objective"] for v in results(out)["verdicts"] if not v["ok"]}


def test_a_healthy_deployment_passes_the_default_gate_and_the_report_shows_the_capacity(
    artifacts, models, serve_python, capacity_file, tmp_path, capsys
):
    # Batching on only: on ÷ off from two 4-second steps is noise here (the sweep test covers that objective).
    out = tmp_path / "report"
    code = gate_run(artifacts, models, serve_python, capacity_file, out, "--batching", "on", seconds=6.0)
    printed = capsys.readouterr().out
    if code == 1 and missed(out) <= SPEED_OBJECTIVES:
        # The p99 of 6 s at 16 users is about its fifth-slowest request: on Sapphire Rapids a stall of 0.25 s
        # in the window moves it past 3× the in-process latency (typically 1.5×). As pt2tf-rollout's --remeasure
        # does, a healthy deployment gets a second measurement after a miss of speed alone; never after a failure.
        first = sorted(missed(out))
        out = tmp_path / "report-again"
        code = gate_run(artifacts, models, serve_python, capacity_file, out, "--batching", "on", seconds=6.0)
        printed = f"first measurement missed {first}; again:\n" + capsys.readouterr().out
    assert code == 0, printed
    found = results(out)
    objectives = {v["objective"] for v in found["verdicts"]}
    assert SPEED_OBJECTIVES | {"failure ratio"} <= objectives
    assert found["capacity"]["cpu"] == cpu_info().describe()  # measured here, on this machine
    summary = (out / "summary.md").read_text()
    assert "## The machine's capacity (the yardstick)" in summary and "img/s, batch 32" in summary
    assert "in process img/s at these users (served ÷)" in summary  # beside every served figure


def test_a_server_on_one_thread_fails_the_throughput_objective(
    artifacts, models, serve_python, capacity_file, tmp_path, capsys
):
    # One intra-op and one inter-op thread, one batch thread: the deployment uses one core of the machine's.
    one_thread = ["--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1",
                  "--batching_parameters_file=" + str(_batching(tmp_path, num_batch_threads=1))]  # fmt: skip
    out = tmp_path / "report"
    code = gate_run(artifacts, models, serve_python, capacity_file, out, "--batching", "on",
                    *(f"--server-flag={flag}" for flag in one_thread))  # fmt: skip
    assert code == 1, capsys.readouterr().out
    assert "throughput ÷ in-process capacity" in missed(out), results(out)["verdicts"]


def test_a_batching_timeout_far_too_long_for_the_load_fails_latency_and_throughput(
    artifacts, models, serve_python, capacity_file, tmp_path, capsys
):
    # Four times the time the machine needs for the whole load's batch: every batch waits out the timeout,
    # since 16 callers never fill max_batch_size.
    expected_ms = runner.capacity_mod.load(capacity_file).of("serving_default").latency_ms_at(GATE_USERS)
    slow = _batching(tmp_path, batch_timeout_micros=int(4 * expected_ms * 1000))
    out = tmp_path / "report"
    code = gate_run(artifacts, models, serve_python, capacity_file, out, "--batching", "on",
                    f"--server-flag=--batching_parameters_file={slow}",
                    seconds=max(4.0, 12 * expected_ms / 1000))  # at least two timeouts in the window  # fmt: skip
    assert code == 1, capsys.readouterr().out
    assert missed(out) >= SPEED_OBJECTIVES


def test_a_candidate_that_answers_differently_fails_the_gate(
    artifacts, models, serve_python, capacity_file, shifted_version, tmp_path, capsys
):
    shifted = tmp_path / "models"
    shutil.copytree(models / MODEL / "1", shifted / MODEL / "1")
    shutil.copytree(shifted_version, shifted / MODEL / "2")
    out = tmp_path / "report"
    config = config_copy(tmp_path / "config")
    both = (config / "models.config").read_text().replace("latest { num_versions: 1 }", "all {}")
    (config / "models.config").write_text(both)
    with ServerProcess(embedded_flags(config, shifted), python=str(serve_python)) as server:  # one server for both
        code = run(["--artifacts", artifacts, "--rest", server.rest_url, "--grpc", server.grpc_target, "--out", out,
                    "--capacity", capacity_file, "--scenarios", "grpc-tensor", "--concurrency", GATE_USERS,
                    "--warmup", 1, "--seconds", 3, "--current", 1, "--candidate", 2, "--rounds", 1])  # fmt: skip
    assert code == 1, capsys.readouterr().out
    # The sweep served the newest version (the candidate) too: its steps failed as well.
    assert {"candidate failure ratio", "failure ratio"} <= missed(out), results(out)["verdicts"]
    sides = {c["label"]: c for c in results(out)["comparison"]}
    assert sides["candidate=2"]["requests"] > 0 and sides["candidate=2"]["failures"] == sides["candidate=2"]["requests"]
    assert sides["current=1"]["requests"] > 0 and sides["current=1"]["failures"] == 0


def test_relative_objectives_without_a_way_to_measure_the_capacity_are_refused(artifacts, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(["--artifacts", artifacts, "--out", tmp_path, "--rest", "http://127.0.0.1:1", "--grpc", "127.0.0.1:1"])
    assert "relative to the model's in-process capacity" in capsys.readouterr().err


def test_open_loop_steps_send_at_a_rate_and_time_each_request_from_when_it_was_due(
    artifacts, models, serve_python, capacity_file, tmp_path, capsys
):
    best = runner.capacity_mod.load(capacity_file).of("serving_default").best
    out = tmp_path / "report"
    server = ServerProcess(embedded_flags(config_copy(tmp_path / "config"), models), python=str(serve_python))
    with server:
        target = ["--rest", server.rest_url, "--grpc", server.grpc_target, "--capacity", capacity_file,
                  "--slo", slo_file(tmp_path)]  # fmt: skip
        # A low rate any machine sustains, then five times what one user in flight can get through.
        code = run(["--artifacts", artifacts, "--out", out, *target, "--scenarios", "grpc-tensor,rest-image",
                    "--concurrency", 4, "--warmup", 1, "--seconds", 4, "--rate-fractions", "0.1"])  # fmt: skip
        overloaded = tmp_path / "overloaded"
        run(["--artifacts", artifacts, "--out", overloaded, *target, "--scenarios", "grpc-tensor",
             "--concurrency", 1, "--warmup", 1, "--seconds", 3, "--rates", f"{5 * best:.1f}", "--pool", 1,
             "--arrivals", "constant"])  # fmt: skip
    assert code == 0, capsys.readouterr().out
    found = results(out)
    assert {s["offered_rate"] is None for s in found["steps"]} == {True}  # the gate's closed-loop steps
    opened = found["open_loop"]
    assert {s["scenario"] for s in opened} == {"grpc-tensor", "rest-image"}
    for step in opened:
        assert step["failures"] == 0 and step["requests"] > 0, step
        assert set(step["server"]) == {"queued_ms", "model_ms", "request_path_ms"}, step
        assert step["server"]["model_ms"] > 0
    summary = (out / "summary.md").read_text()
    assert "## Open loop: latency at an arrival rate" in summary and "send lag p99 ms" in summary
    step = results(overloaded)["open_loop"][0]
    # One request in flight cannot keep up: arrivals wait, and the wait is in the latency, not hidden.
    assert step["images_per_second"] < 0.5 * step["offered_rate"], step
    # (Locust keeps response times to two significant digits: its p99 may fall a little below the exact lag.)
    assert step["lag_p99_ms"] > 100 and step["p99_ms"] >= 0.95 * step["lag_p99_ms"], step


def test_the_search_finds_the_capacity_between_a_rate_that_passes_and_one_no_server_keeps_up_with(
    artifacts, models, serve_python, capacity_file, tmp_path, capsys
):
    # Half the in-process best passes on any machine with a bound of 50 × one image's latency; three times the best
    # cannot be answered as it falls due. One bisection between them, in short windows (smoke profile). Not a
    # quarter: a window holds ≥ 100 requests, which at a quarter of the AVX2 EPYC's ~17 img/s is 24 s. Up to 8
    # windows, not 6, for 3 that agree: a stall near a ~2 s window's close spoils that window, not the probe.
    open_loop = (
        LENIENT.replace("concurrency = 4", f"concurrency = {GATE_USERS}")
        + "rate_share_of_capacity = 0.5\nrate_max_p99_over_batch_1 = 50\nmin_headroom = 1.0\n"
    )
    out = tmp_path / "report"
    code = gate_run(artifacts, models, serve_python, capacity_file, out, "--batching", "on", "--slo",
                    slo_file(tmp_path, open_loop), "--search", "--search-fractions", "0.5,3", "--profile", "smoke",
                    "--bisections", 1, "--max-windows", 8, seconds=2.0)  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    found = results(out)
    (searched,) = found["searches"]
    best = runner.capacity_mod.load(capacity_file).of("serving_default").best
    assert (searched["scenario"], searched["batching"]) == ("grpc-tensor", "on")
    probes = {round(p["rate"] / best, 3): p for p in searched["probes"]}
    assert len(probes) == 3, probes  # 0.5×, 3×, and the bisection's 1.75×
    low, high = probes[0.5], probes[3.0]
    assert low["ok"] and low["stable"] and low["step"]["failures"] == 0, low
    assert not high["ok"] and any(m.startswith("answered") for m in high["misses"]), high
    assert high["step"]["scheduled"] > high["step"]["requests"]  # due, not answered: counted against it
    assert low["rate"] <= searched["capacity"] < high["rate"]
    assert set(low["step"]["server"]) == {"queued_ms", "model_ms", "request_path_ms"}
    gated = {v["objective"]: v["ok"] for v in found["verdicts"] if "req/s" in v["scenario"]}
    assert gated == {
        "p99 at the production rate": True,
        "answered or in flight ÷ requests due": True,
        "failure ratio": True,
        "steady (windows agree)": True,
        "capacity at the p99 objective ÷ production rate": True,
    }
    assert "capacity at the objective:" in printed
    summary = (out / "summary.md").read_text()
    assert "## Capacity at the p99 objective, open loop" in summary and "server ms: queued / model" in summary
    assert "Not run: give `--search`" not in summary


def _batching(folder: Path, **fields: int) -> Path:
    """docker/config's batching.config with some fields changed, as a file of its own."""
    text = (REPOSITORY_CONFIG / "batching.config").read_text()
    for name, value in fields.items():
        text, count = re.subn(rf"{name} {{ value: \d+ }}", f"{name} {{ value: {value} }}", text)
        assert count == 1, name
    path = folder / "batching.config"
    path.write_text(text)
    return path


def test_run_spawned_answers_as_subprocess_run_does_and_kills_its_group_on_timeout(tmp_path):
    # The load-test suite runs commands (kubectl, probes, locust) in a process that has used gRPC: by posix_spawn.
    done = run_spawned(["bash", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    # The grandchild names itself and lives a minute unless killed: no race with a stalled test process.
    named = tmp_path / "grandchild.pid"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_spawned(["bash", "-c", f"sleep 60 & echo $! > {named}; sleep 60"], timeout=2)
    assert time.monotonic() - started < 15
    grandchild = int(named.read_text())
    deadline = time.monotonic() + 30
    while process_state(grandchild) not in ("", "Z"):  # gone, or killed and not reaped yet
        assert time.monotonic() < deadline, "the timeout killed the child but not its process group"
        time.sleep(0.1)
    with pytest.raises(FileNotFoundError, match="no-such-program-pt2tf"):
        run_spawned(["no-such-program-pt2tf"], timeout=5)


# ---------------------------------------------------------------------------- rollout


def _candidate(serve_python: Path, source: Path, target: Path, *flags: str) -> None:
    """Build a wrong or slower candidate (shifted_version.py) in the lane's env."""
    log = target.with_name(target.name + ".log")
    # Spawned, not subprocess: this process has run gRPC, whose fork handlers abort a forked child.
    argv = [str(serve_python), str(Path(__file__).with_name("shifted_version.py")), str(source), str(target), *flags]
    child = Spawned(argv, dict(os.environ), log)
    assert child.wait(timeout=600) == 0, log.read_text(errors="replace")[-3000:]
    log.unlink()


@pytest.fixture(scope="module")
def shifted_version(models, serve_python, tmp_path_factory) -> Path:
    """Version 1 answering one class off, built once (shifted_version.py); the tests that serve it copy it."""
    target = tmp_path_factory.mktemp("shifted") / "version"
    _candidate(serve_python, models / MODEL / "1", target)
    return target


def _served(config_file: Path) -> tuple[list[int], dict[str, int]]:
    entry = rollout.read_config(config_file).model_config_list.config[0]
    return list(entry.model_version_policy.specific.versions), dict(entry.version_labels)


def test_rollout_promotes_an_identical_candidate_and_rolls_back_a_wrong_or_slower_one(
    artifacts, models, serve_python, capacity_file, shifted_version, tmp_path
):
    repo = tmp_path / "models" / MODEL
    shutil.copytree(models / MODEL / "1", repo / "1")
    shutil.copytree(repo / "1", repo / "2")  # identical
    shutil.copytree(shifted_version, repo / "3")  # answers shifted by one class
    _candidate(serve_python, repo / "1", repo / "4", "--slower", "6")  # the same answers, six times the work
    config = config_copy(tmp_path / "config")
    models_config = config / "models.config"
    models_config.write_text(str(rollout.with_versions(rollout.read_config(models_config), MODEL, [1], {"stable": 1})))
    best = runner.capacity_mod.load(capacity_file).of("serving_default").best
    rate = round(0.3 * best, 1)
    seconds = max(3.0, 60 / rate)  # at least ~60 requests per label and step, on any CPU kind
    # p50 and p99 of a few seconds at a rate move a lot on a shared machine: the identical candidate is judged
    # with loose tolerances (and re-measured after a latency-only miss, as by default); the heavier one with
    # the defaults.
    loose = ["--tolerance", 2, "--tail-tolerance", 4]
    flags = embedded_flags(config, tmp_path / "models", "--allow_version_labels_for_unavailable_models=true")
    with ServerProcess(flags, python=str(serve_python)) as server:
        common = ["--artifacts", artifacts, "--grpc", server.grpc_target, "--rest", server.rest_url, "--config",
                  models_config, "--rounds", 1, "--warmup", 1, "--drain-seconds", 1, "--gate-seconds", seconds,
                  "--canary-seconds", seconds, "--switch-seconds", seconds + 3, "--canary-share", 0.3]  # fmt: skip

        def roll(name: str, *more) -> tuple[int, dict]:
            code = rollout.main([str(a) for a in [*common, "--out", tmp_path / name, *more]])
            return code, json.loads((tmp_path / name / "rollout.json").read_text())

        code, record = roll("wrong", "--stable", 1, "--candidate", 3, "--rate", rate, *loose)
        missed = {g["name"] for g in record["gates"] if not g["ok"]}
        assert code == 1 and "gate: canary failures" in missed, record["gates"]
        assert "gate: stable failures" not in missed  # stable served throughout
        assert record["outcome"].startswith("rolled back") and record["applied"][-1]["step"] == "rollback"
        assert _served(models_config) == ([1], {"stable": 1})

        code, record = roll("identical", "--stable", 1, "--candidate", 2, "--rate", rate, *loose)
        assert code == 0, record["gates"]
        switch = next(g for g in record["gates"] if g["name"].startswith("switch"))
        assert switch["ok"] and switch["measured"].startswith("0 of "), switch  # no request failed as labels moved
        assert [a["step"] for a in record["applied"]] == ["load", "label", "promote", "retire"]
        assert _served(models_config) == ([2], {"stable": 2})

        # The six-times heavier version at about half what it can serve: its p50 was 3.9–4.8× stable's on
        # Sapphire Rapids (the default bound is 1.5×). Overloaded, it can answer nothing in a window: open-loop
        # requests are timed from when they were due, and its queue outgrows the window (at 0.3× and 0.6× the
        # best, runs on Sapphire Rapids saw none of its requests finish in 4 s).
        slow_rate = round(0.08 * best, 1)
        slow_window = ["--gate-seconds", max(3.0, 15 / slow_rate)]  # ~15 requests a label give a p50
        code, record = roll("slower", "--stable", 2, "--candidate", 4, "--rate", slow_rate, *slow_window)
        missed = {g["name"] for g in record["gates"] if not g["ok"]}
        assert code == 1 and "gate: canary p50 ÷ stable p50" in missed, record["gates"]
        assert any(g["name"] == "gate: canary p50 ÷ stable p50" and not g["ok"] for g in record["remeasured"])
        assert _served(models_config) == ([2], {"stable": 2})
        with GrpcClient(server.grpc_target, timeout=60) as client:
            states = {s["version"]: s["state"] for s in client.status(MODEL)["model_version_status"]}
        assert states.get("2") == "AVAILABLE" and states.get("4") != "AVAILABLE", states


def test_a_phase_that_missed_only_latency_is_measured_again_and_a_failure_never_is(capsys):
    def gates(p99_ok: bool, failures: int = 0) -> list[rollout.Gate]:
        stable, canary = rollout.Figures(80, 0, 90, 200), rollout.Figures(80, failures, 95, 210 if p99_ok else 1600)
        return rollout.judge("gate", stable, canary, 0.5, 1.5)

    def phase(*measurements: list[rollout.Gate], remeasure: int = 1) -> tuple[list[rollout.Gate], rollout.Record, int]:
        taken = iter(measurements)
        record = rollout.Record()
        return rollout.measure_phase(lambda: next(taken), remeasure, record), record, len(measurements) - len([*taken])

    final, record, taken = phase(gates(False), gates(True))  # one stall, then as stable: passes
    assert all(g.ok for g in final) and taken == 2
    assert [g.name for g in record.remeasured if not g.ok] == ["gate: canary p99 ÷ stable p99"]
    assert "measuring the phase again" in capsys.readouterr().out
    final, record, taken = phase(gates(False), gates(False), gates(True))  # slower twice: missed
    assert not all(g.ok for g in final) and taken == 2
    final, record, taken = phase(gates(False), gates(True), remeasure=0)  # the first measurement decides
    assert not all(g.ok for g in final) and taken == 1 and not record.remeasured
    final, record, taken = phase(gates(False, failures=1), gates(True))  # a wrong answer is not noise
    assert {g.name for g in final if not g.ok} >= {"gate: canary failures"} and taken == 1 and not record.remeasured
    final, record, taken = phase(gates(True), gates(False))  # met at once: measured once
    assert all(g.ok for g in final) and taken == 1


def test_rollout_dry_run_prints_the_plan_and_changes_nothing(artifacts, tmp_path, capsys):
    models_config = config_copy(tmp_path / "config") / "models.config"
    before = models_config.read_text()
    code = rollout.main([str(a) for a in ["--artifacts", artifacts, "--grpc", "127.0.0.1:1", "--rest",
                         "http://127.0.0.1:1", "--config", models_config, "--stable", 1, "--candidate", 2,
                         "--rate", 10, "--dry-run", "--out", tmp_path / "out"]])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    for step in ("load", "label", "promote", "retire"):
        assert f"[{step}] would apply" in printed
    assert "versions: 2" in printed and models_config.read_text() == before
