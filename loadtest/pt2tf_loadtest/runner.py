"""pt2tf-loadtest: a Locust sweep over concurrency, batching off and on, an SLO gate, a report.

    # against the embedded server, started here with and without batching (the default)
    python -m pt2tf_loadtest.runner --artifacts artifacts/onnx2tf --models models/onnx2tf \\
        --serve-python ~/.cache/pt2tf/envs/onnx2tf-*/bin/python --out reports/loadtest

    # against any TF Serving, as it is configured (a REST URL and a gRPC address are all it needs)
    python -m pt2tf_loadtest.runner --artifacts artifacts/onnx2tf \\
        --rest http://serving.example:8501 --grpc serving.example:8500 --out reports/loadtest

Each step runs Locust headless in this process (library mode): all users start at once, a
warm-up is run and thrown away, then the step is measured for a fixed time. Per step: requests/s,
images/s, p50/p90/p95/p99/max latency, failure ratio, the load generator's CPU (a step whose
generator was past 90% of a core is marked unreliable, never taken as the server's limit), and,
from the server's Prometheus page, the batches it ran: the proof that batching happened.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gevent
import psutil
from locust.env import Environment
from pt2tf_convert.repository import RepositoryError, served_model
from pt2tf_serve.bench import cpu_model
from pt2tf_serve.metrics import PROCESSED_BATCH_SIZE, REQUEST_COUNT, fetch_page
from pt2tf_serve.process import ServerProcess, Spawned, config_copy, edit_models_config, embedded_flags, server_env

from . import capacity as capacity_mod
from . import report, search, slo
from .inputs import load_inputs
from .openloop import Arrivals, percentile_ms
from .users import TARGET, USERS

PROFILES = {  # concurrency sweep, warm-up and measured seconds per step
    "smoke": ([1, 4], 1.0, 3.0),
    "default": ([1, 4, 8, 16, 32], 5.0, 15.0),
    "full": ([1, 2, 4, 8, 16, 24, 32, 48, 64], 10.0, 60.0),
}
SEARCH = {  # --search per profile: warm-up and window seconds per probed rate, bisections after the sweep
    "smoke": (1.0, 2.0, 1),
    "default": (2.0, 4.0, 2),
    "full": (5.0, 10.0, 4),
}
SATURATED = 0.9  # Locust warns when its process passes 90% CPU


@dataclass
class Step:
    scenario: str
    batching: str  # "on", "off", or "as configured" for a server this runner did not start
    concurrency: int
    seconds: float
    requests: int
    failures: int
    requests_per_second: float
    images_per_second: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    generator_cpu: float  # share of one core used by this process while measuring
    unreliable: bool
    batches: dict[str, int] = field(default_factory=dict)  # server-side: batch size bucket → batches
    server_requests: int | None = None  # server-side: requests it answered OK while measured
    failure_examples: list[str] = field(default_factory=list)
    label: str = ""  # the model version or label asked for, when comparing two
    offered_rate: float | None = None  # open loop: requests/s scheduled (None: closed loop, `concurrency` users)
    lag_p99_ms: float = 0.0  # open loop: how late the generator sent its requests (p99), counted in latency
    server: dict[str, float] = field(default_factory=dict)  # mean ms per request: queued, in the model, request path
    by_name: dict[str, dict] = field(default_factory=dict)  # Locust's entries: "Predict serving_default @canary" → …
    scheduled: int | None = None  # open loop: requests the schedule made due while measured
    carried: int | None = None  # open loop: requests in flight when the window closed − when it opened
    # Locust's histogram of the step (ms, rounded as Locust rounds → requests): windows merge exactly with it.
    # Not written to the reports.
    response_times: dict[int, int] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """The step as the reports keep it (without the raw histogram)."""
        row = asdict(self)
        del row["response_times"]
        return row

    @property
    def achieved_share(self) -> float | None:
        """Open loop: answers ÷ requests due while measured (1.0: the deployment kept up with the schedule)."""
        if self.scheduled is None:
            return None
        return (self.requests - self.failures) / max(1, self.scheduled)

    @property
    def kept_share(self) -> float | None:
        """Open loop: (answered + still in flight) ÷ due. A window's edges cut through the requests in flight,
        so answered ÷ due alone moves by a request or two per window with nothing wrong (99.0% for 300 requests
        at 17 req/s, measured); a deployment that falls behind leaves its due requests unsent (the pool is
        busy), and a slow answer is the p99's to judge."""
        if self.scheduled is None:
            return None
        return (self.requests - self.failures + (self.carried or 0)) / max(1, self.scheduled)

    @property
    def failure_ratio(self) -> float:
        return self.failures / max(1, self.requests)


# ---------------------------------------------------------------------------- the server's metrics


# TF Serving's latency histograms (microseconds): what the request path, the model and the batch queue took.
LATENCIES = {
    "request": ":tensorflow:serving:request_latency",  # the whole request inside the server
    "runtime": ":tensorflow:serving:runtime_latency",  # the Session run, batch queue included
    "queued": ":tensorflow:serving:batching_session:queuing_latency",  # enqueue → batch start
}


def scrape(rest_url: str) -> tuple[dict[str, int], int, dict[str, tuple[float, float]]] | None:
    """From the server's Prometheus page: cumulative processed-batch-size buckets, requests answered OK,
    and (sum µs, count) of each latency histogram."""
    try:
        samples = fetch_page(rest_url)
    except OSError:
        return None
    prefix = PROCESSED_BATCH_SIZE + '_bucket{le="'
    buckets = {key[len(prefix) : -2]: int(value) for key, value in samples.items() if key.startswith(prefix)}
    answered = sum(
        int(value) for key, value in samples.items() if key.startswith(REQUEST_COUNT + "{") and 'status="OK"' in key
    )
    latencies = {}
    for what, name in LATENCIES.items():
        total = sum(v for k, v in samples.items() if k.startswith(name + "_sum"))
        count = sum(v for k, v in samples.items() if k.startswith(name + "_count"))
        latencies[what] = (total, count)
    return buckets, answered, latencies


def time_breakdown(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per request between two scrapes: queued for a batch, in the model, in the request path."""
    means = {}
    for what in LATENCIES:
        total, count = (a - b for a, b in zip(after.get(what, (0, 0)), before.get(what, (0, 0)), strict=True))
        if count > 0:
            means[what] = total / count / 1000
    if "request" not in means or "runtime" not in means:
        return {}
    queued = means.get("queued", 0.0)
    return {
        "queued_ms": queued,
        "model_ms": max(0.0, means["runtime"] - queued),
        "request_path_ms": max(0.0, means["request"] - means["runtime"]),
    }


def batch_histogram(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int]:
    """Batches run between two scrapes, per size range (non-cumulative), labelled by TF's bucket limits."""
    if not after:
        return {}
    before = before or {}
    histogram, previous_limit, previous_count = {}, "0", 0
    for limit, cumulative in after.items():
        delta = cumulative - before.get(limit, 0)
        count = delta - previous_count
        if count:
            low, high = _size(previous_limit), _size(limit, upper=True)
            histogram[low if low == high else f"{low}–{high}"] = count
        previous_limit, previous_count = limit, delta
    return histogram


def _size(limit: str, upper: bool = False) -> str:
    """TF counts v < limit: bucket [a, b) holds batch sizes a … ceil(b) - 1."""
    if limit == "+Inf":
        return "∞"
    value = float(limit)
    if upper:
        return str(int(value) - 1 if value.is_integer() else int(value))
    return str(int(value) if value.is_integer() else int(value) + 1)


# ---------------------------------------------------------------------------- one step


def run_step(
    scenario: str,
    concurrency: int,
    warmup: float,
    seconds: float,
    rest_url: str,
    batching: str,
    arrivals: Arrivals | None = None,
) -> Step:
    """Run one Locust step in this process and measure it: `concurrency` users back to back, or, given
    `arrivals`, a pool of `concurrency` users sending at its rate (open loop)."""
    user_class = USERS[scenario]
    environment = Environment(user_classes=[user_class], host=rest_url, catch_exceptions=True)
    runner = environment.create_local_runner()
    TARGET.arrivals = arrivals
    if arrivals is not None:
        environment.events.request.add_listener(arrivals.finish)
    try:
        return _measure(environment, runner, scenario, concurrency, warmup, seconds, rest_url, batching, arrivals)
    finally:  # also on an error or Ctrl-C: no user left running, no schedule left for the next step
        runner.quit()
        TARGET.arrivals = None


def _measure(environment, runner, scenario, concurrency, warmup, seconds, rest_url, batching, arrivals) -> Step:
    """run_step's body; the runner stops (run_step's finally) once everything here is read."""
    runner.start(concurrency, spawn_rate=concurrency)
    gevent.sleep(warmup)
    return _window(environment, scenario, concurrency, seconds, rest_url, batching, arrivals)


def run_windows(scenario: str, pool: int, warmup: float, seconds: float, rest_url: str, batching: str,
                arrivals: Arrivals) -> Iterator[Step]:  # fmt: skip
    """Open-loop load at `arrivals`' rate that runs on while the caller asks for more: after the warm-up,
    each item is one more window of `seconds`, back to back. Closing the generator stops the users."""
    environment = Environment(user_classes=[USERS[scenario]], host=rest_url, catch_exceptions=True)
    runner = environment.create_local_runner()
    TARGET.arrivals = arrivals
    environment.events.request.add_listener(arrivals.finish)
    try:
        runner.start(pool, spawn_rate=pool)
        gevent.sleep(warmup)
        while True:
            yield _window(environment, scenario, pool, seconds, rest_url, batching, arrivals)
    finally:
        runner.quit()
        TARGET.arrivals = None


def _window(environment, scenario, concurrency, seconds, rest_url, batching, arrivals) -> Step:
    """Measure `seconds` of the running users, from a scrape of the server's metrics to another."""
    before = scrape(rest_url)
    process = psutil.Process()
    # The window opens here, after the scrape: what finished before it is warm-up (or the last window).
    environment.stats.reset_all()
    if arrivals is not None:
        arrivals.lags.clear()
        arrivals.recording = True
        in_flight = arrivals.in_flight
    cpu_before, started = process.cpu_times(), time.monotonic()
    gevent.sleep(seconds)
    cpu_after, ended = process.cpu_times(), time.monotonic()
    carried = arrivals.in_flight - in_flight if arrivals is not None else None  # now: the scrape below yields
    elapsed = ended - started
    # Read everything now: users still finish requests while they stop, and those are not this step's.
    total = environment.stats.total
    requests, failures = total.num_requests, total.num_failures
    percentiles = {p: float(total.get_response_time_percentile(p) or 0) for p in (0.50, 0.90, 0.95, 0.99)}
    examples = [f"{error.name}: {error.error}" for error in list(environment.stats.errors.values())[:3]]
    max_ms = total.max_response_time or 0.0
    histogram = dict(total.response_times)
    by_name = {
        entry.name: {"requests": entry.num_requests, "failures": entry.num_failures,
                     "p50_ms": float(entry.get_response_time_percentile(0.50) or 0),
                     "p99_ms": float(entry.get_response_time_percentile(0.99) or 0)}
        for entry in environment.stats.entries.values()
    }  # fmt: skip
    after = scrape(rest_url)  # before the users stop: what they finish while stopping is not this step's
    lags = list(arrivals.lags) if arrivals is not None else []
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / elapsed
    ok = requests - failures
    return Step(
        scenario=scenario,
        batching=batching,
        concurrency=concurrency,
        seconds=elapsed,
        requests=requests,
        failures=failures,
        requests_per_second=requests / elapsed,
        images_per_second=ok / elapsed,  # one image per request
        p50_ms=percentiles[0.50],
        p90_ms=percentiles[0.90],
        p95_ms=percentiles[0.95],
        p99_ms=percentiles[0.99],
        max_ms=float(max_ms),
        generator_cpu=cpu,
        unreliable=cpu > SATURATED,
        batches=batch_histogram(before[0], after[0]) if before and after else {},
        server_requests=after[1] - before[1] if before and after else None,
        failure_examples=examples,
        offered_rate=arrivals.rate if arrivals is not None else None,
        lag_p99_ms=percentile_ms(lags, 0.99),
        server=time_breakdown(before[2], after[2]) if before and after else {},
        by_name=by_name,
        scheduled=arrivals.due_between(started, ended) if arrivals is not None else None,
        carried=carried,
        response_times=histogram,
    )


def _say(step: Step) -> None:
    flag = "  UNRELIABLE: load generator saturated" if step.unreliable else ""
    batches = ", ".join(f"{k}: {v}" for k, v in step.batches.items()) or "–"
    load = f"c={step.concurrency:<3}" if step.offered_rate is None else f"offered {step.offered_rate:5.1f}/s"
    server = step.server
    if server:
        batches += (f"  server ms: queued {server['queued_ms']:.0f}, model {server['model_ms']:.0f}, "
                    f"request path {server['request_path_ms']:.0f}")  # fmt: skip
    if step.offered_rate is not None:
        batches += f"  send lag p99 {step.lag_p99_ms:.0f} ms"
    print(
        f"  {step.scenario:<12} batching {step.batching:<3} {step.label:<10} {load} "
        f"{step.images_per_second:6.1f} img/s  p50 {step.p50_ms:5.0f}  p99 {step.p99_ms:5.0f} ms  "
        f"fail {step.failure_ratio:.1%}  gen CPU {step.generator_cpu:.0%}  batches {batches}{flag}",
        flush=True,
    )


# ---------------------------------------------------------------------------- servers


class ManagedServer:
    """The embedded server, started by this runner with or without batching (in the lane's env)."""

    def __init__(
        self,
        python: Path,
        models: Path,
        batching: bool,
        specific_versions: list[int] | None,
        extra_flags: list[str] = (),
        config: Path | None = None,
    ):
        folder = Path(tempfile.mkdtemp(prefix="pt2tf-loadtest-"))
        # A caller's config folder stays the caller's; docker/config's serves the model the users send to.
        config = config or config_copy(folder / "config", model=TARGET.model or None)
        if specific_versions:
            edit_models_config(config / "models.config", versions=specific_versions)
        # The caller's flags first, so that a batching-off server stays off whatever they say about batching.
        extra = [*extra_flags, *([] if batching else ["--enable_batching=false", "--batching_parameters_file="])]
        self.folder = folder
        self.process = ServerProcess(embedded_flags(config, models, *extra), python=str(python))

    def __enter__(self):
        try:
            return self.process.start()
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def __exit__(self, *exc) -> None:
        self.process.__exit__(*exc)  # stops it and removes its log
        shutil.rmtree(self.folder, ignore_errors=True)


def measure_capacity(
    python: Path, artifacts: Path, model_dir: Path, out: Path, version: int | None = None
) -> capacity_mod.Capacity:
    """The model (its newest version, or `version`) in process, in the lane's env, with docker/config's settings."""
    folder = Path(tempfile.mkdtemp(prefix="pt2tf-capacity-"))
    try:
        flags = embedded_flags(config_copy(folder / "config"), model_dir.parent)
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(python), "-m", "pt2tf_loadtest.capacity", "--artifacts", str(artifacts),
                "--model-dir", str(model_dir), "--out", str(out),
                *(["--version", str(version)] if version is not None else []), "--", *flags]  # fmt: skip
        log = folder / "capacity.log"
        # Spawned, not subprocess: this process may already run gRPC threads, which forbid fork.
        # The server's environment (docker/config/server.env): the same kernels as the server it gates.
        child = Spawned(argv, {**server_env(flags), "TF_CPP_MIN_LOG_LEVEL": "2"}, log)
        if child.wait() != 0:
            lines = log.read_text(errors="replace").splitlines()
            raise slo.SloError("measuring the in-process capacity failed:\n  " + "\n  ".join(lines[-15:]))
        return capacity_mod.load(out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- the scenario


def sweep(args, rest_url: str, grpc_target: str, batching: str) -> list[Step]:
    TARGET.grpc = grpc_target
    steps = []
    for scenario in args.scenarios:
        for concurrency in args.concurrency:
            step = run_step(scenario, concurrency, args.warmup, args.seconds, rest_url, batching)
            _say(step)
            steps.append(step)
        for rate in offered_rates(args, scenario):
            arrivals = Arrivals(rate, poisson=args.arrivals == "poisson", seed=len(steps))
            step = run_step(scenario, args.pool, args.warmup, args.seconds, rest_url, batching, arrivals)
            _say(step)
            steps.append(step)
    return steps


def offered_rates(args, scenario: str) -> list[float]:
    """The open-loop steps' arrival rates: --rates as given, or --rate-fractions of the measured capacity."""
    if args.rates:
        return args.rates
    if args.rate_fractions:
        best = args.capacity_measured.of(capacity_mod.scenario_signature(scenario)).best
        return [round(fraction * best, 1) for fraction in args.rate_fractions]
    return []


def search_rates(args, rest_url: str, grpc_target: str, batching: str) -> list[search.Search]:
    """For each scenario with open-loop objectives: the capacity at its p99 objective (search.py), probing the
    production rate on the way."""
    TARGET.grpc = grpc_target
    found = []
    for scenario in args.scenarios:
        wanted = slo.rate_objective(args.slo_file, scenario, args.capacity_measured)
        if wanted is None:
            continue
        own = args.capacity_measured
        base = own.of(capacity_mod.scenario_signature(scenario)).best if own is not None else 2 * wanted.rate
        result = search.Search(scenario, batching, wanted.bound_ms, base)
        print(f"  {scenario:<12} batching {batching:<3} searching the highest rate with p99 ≤ {wanted.bound_ms:.0f} ms "
              f"(production rate {wanted.rate:.1f} req/s; sweep in fractions of {base:.1f})", flush=True)  # fmt: skip

        measure = functools.partial(_probe_rate, args, scenario, rest_url, batching, wanted, len(found))
        search.find_capacity(result, measure, args.search_fractions, args.bisections, also=[wanted.rate],
                             say=_say_probe)  # fmt: skip
        knee = f"{result.knee:.1f} img/s" if result.knee is not None else "–"
        print(f"  {scenario:<12} batching {batching:<3} capacity at the objective: {result.describe()}; "
              f"knee {knee}", flush=True)  # fmt: skip
        found.append(result)
    return found


def _probe_rate(args, scenario: str, rest_url: str, batching: str, wanted: slo.RateObjective, seed: int,
                rate: float) -> search.Probe:  # fmt: skip
    """One rate of a search: open-loop windows at `rate` until they agree (search.probe)."""
    arrivals = Arrivals(rate, poisson=args.arrivals == "poisson", seed=seed)
    seconds = max(args.window, args.rule.min_requests / rate)
    windows = run_windows(scenario, args.pool, args.search_warmup, seconds, rest_url, batching, arrivals)
    return search.probe(rate, windows, args.rule, wanted.bound_ms, wanted.objective.max_failure_ratio)


def _say_probe(probe: search.Probe) -> None:
    step = probe.step
    server = step.server
    breakdown = (f"  server ms: queued {server['queued_ms']:.0f}, model {server['model_ms']:.0f}, request path "
                 f"{server['request_path_ms']:.0f}" if server else "")  # fmt: skip
    verdict = "pass" if probe.ok else "miss: " + "; ".join(probe.misses)
    print(
        f"    offered {probe.rate:6.1f}/s  answered {step.achieved_share:6.1%} of due  p50 {step.p50_ms:5.0f}  "
        f"p99 {step.p99_ms:5.0f} ms  {len(probe.windows)} windows{breakdown}  {verdict}",
        flush=True,
    )


def compare(args, rest_url: str, grpc_target: str, rounds: int) -> list[Step]:
    """Current vs candidate, interleaved (A B A B …) so machine noise hits both alike."""
    TARGET.grpc = grpc_target
    steps = []
    for _ in range(rounds):
        for side, spec in (("current", args.current), ("candidate", args.candidate)):
            TARGET.version, TARGET.label = (int(spec), None) if spec.isdigit() else (None, spec)
            for scenario in args.scenarios:
                concurrency = args.slo_file.objective(scenario).concurrency
                step = run_step(scenario, concurrency, args.warmup, args.seconds, rest_url, "as served")
                step.label = f"{side}={spec}"
                _say(step)
                steps.append(step)
    TARGET.version = TARGET.label = None
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--artifacts", type=Path, required=True, help="the export's output: reference photos and answers"
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder (reports/loadtest)")
    where = parser.add_argument_group("the server")
    where.add_argument("--rest", help="REST base URL of a running server (with --grpc): measured as configured")
    where.add_argument("--grpc", help="gRPC HOST:PORT of a running server")
    where.add_argument("--models", type=Path, help="model repository for the embedded server this runner starts")
    where.add_argument("--serve-python", type=Path, help="the lane env's python, which runs the embedded server")
    parser.add_argument("--lane", default="", help="lane name, for the report")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("LOADTEST_PROFILE", "default"))
    parser.add_argument("--concurrency", help="comma-separated users per step (overrides the profile)")
    parser.add_argument("--warmup", type=float, help="seconds run and discarded before each step")
    parser.add_argument("--seconds", type=float, help="seconds measured per step")
    parser.add_argument("--scenarios", default="grpc-tensor,rest-image", help=f"from: {', '.join(USERS)}")
    parser.add_argument("--batching", default="off,on", help="off,on: restart the embedded server without and with")
    parser.add_argument("--slo", type=Path, default=Path(__file__).resolve().parents[1] / "slo.toml",
                        help="objectives; the default one is relative to the in-process capacity measured first "
                        "(loadtest/slo-absolute.toml: fixed numbers, no capacity needed)")  # fmt: skip
    parser.add_argument("--capacity", type=Path, help="a capacity JSON measured before (python -m "
                        "pt2tf_loadtest.capacity) instead of measuring it now; on this machine only")  # fmt: skip
    where.add_argument("--server-flag", action="append", default=[], dest="server_flags",
                       help="one more tensorflow_model_server flag for the embedded server (repeatable); "
                       "the capacity is still measured with docker/config's settings")  # fmt: skip
    parser.add_argument("--current", help="model version or label in production (with --candidate)")
    parser.add_argument("--candidate", help="model version or label to roll out")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the candidate comparison")
    parser.add_argument("--model", help="the served model (default: the export's, named in its export.json)")
    open_loop = parser.add_argument_group("open-loop steps (after each scenario's concurrency steps)")
    open_loop.add_argument("--rates", help="comma-separated arrival rates, requests/s (one image each)")
    open_loop.add_argument("--rate-fractions", help="comma-separated fractions of the in-process capacity, "
                           "e.g. 0.25,0.5,0.75,1,1.25 (the capacity is measured first)")  # fmt: skip
    open_loop.add_argument("--arrivals", choices=("constant", "poisson"), default="poisson",
                           help="spacing of the arrivals (default: poisson)")  # fmt: skip
    open_loop.add_argument("--pool", type=int, default=64,
                           help="users serving the arrivals: at most this many requests in flight")  # fmt: skip
    searching = parser.add_argument_group("capacity at the objective (open loop)")
    searching.add_argument("--search", action="store_true",
                           help="per scenario with rate objectives in the SLO file (rate…, rate_p99…): the highest "
                           "arrival rate whose p99 meets them, batching off and on, and the gate at the production "
                           "rate")  # fmt: skip
    searching.add_argument(
        "--search-fractions",
        default="0.25,0.5,0.75,1,1.25",
        help="the sweep's rates, in fractions of the in-process best img/s (default: %(default)s)",
    )
    searching.add_argument("--bisections", type=int, help="probes between the last rate that passed and the first "
                           "that failed (default: per profile)")  # fmt: skip
    searching.add_argument("--window", type=float, help="seconds per measured window of a probe (default: per "
                           "profile)")  # fmt: skip
    searching.add_argument("--windows", type=int, default=3, help="consecutive windows that must agree "
                           "(default: %(default)s)")  # fmt: skip
    searching.add_argument("--max-windows", type=int, default=6, help="a probe whose windows have not agreed after "
                           "this many does not pass (default: %(default)s)")  # fmt: skip
    searching.add_argument("--spread", type=float, default=0.10, help="agreeing windows: answered ÷ due and median "
                           "latency within this share (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)

    concurrency, warmup, seconds = PROFILES[args.profile]
    args.concurrency = [int(c) for c in args.concurrency.split(",")] if args.concurrency else concurrency
    args.warmup = warmup if args.warmup is None else args.warmup
    args.seconds = seconds if args.seconds is None else args.seconds
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in USERS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(USERS)}")
    external = bool(args.rest or args.grpc)
    if external and not (args.rest and args.grpc):
        parser.error("give both --rest and --grpc for a running server")
    if not external and not (args.models and args.serve_python):
        parser.error("give --rest and --grpc (a running server), or --models and --serve-python (the embedded one)")
    try:
        args.rates = [float(r) for r in args.rates.split(",")] if args.rates else []
        args.rate_fractions = [float(f) for f in args.rate_fractions.split(",")] if args.rate_fractions else []
    except ValueError as exc:
        parser.error(f"--rates and --rate-fractions take comma-separated numbers: {exc}")
    if any(r <= 0 for r in args.rates + args.rate_fractions) or args.pool < 1:
        parser.error("arrival rates, rate fractions and --pool must be positive")
    if args.rates and args.rate_fractions:
        parser.error("give --rates or --rate-fractions, not both")
    if args.server_flags and external:
        parser.error("--server-flag configures the embedded server this runner starts, not one given by --rest")
    if bool(args.current) != bool(args.candidate):
        parser.error("give both --current and --candidate, or neither")
    try:
        args.slo_file = slo.load(args.slo, args.scenarios)
    except slo.SloError as exc:
        parser.error(str(exc))
    args.search_warmup, window, bisections = SEARCH[args.profile]
    args.window = window if args.window is None else args.window
    args.bisections = bisections if args.bisections is None else args.bisections
    try:
        args.search_fractions = [float(f) for f in args.search_fractions.split(",") if f.strip()]
        args.rule = search.Rule(args.windows, args.max_windows, args.spread)
    except ValueError as exc:
        parser.error(f"--search-fractions, --windows, --max-windows, --spread: {exc}")
    if args.search:
        if not args.search_fractions or min(args.search_fractions) <= 0 or args.window <= 0 or args.bisections < 0:
            parser.error("--search-fractions and --window must be positive, --bisections not negative")
        if not any(args.slo_file.objective(s).open_loop for s in args.scenarios):
            # make loadtest always asks; an SLO file without rate objectives (slo-absolute.toml) says none.
            print(f"--search: {args.slo} states no open-loop objective (rate or rate_share_of_capacity, and "
                  f"rate_p99_ms or rate_max_p99_over_batch_1) for {', '.join(args.scenarios)}: no capacity search",
                  flush=True)  # fmt: skip
            args.search = False
    needs_capacity = args.slo_file.relative or bool(args.rate_fractions)
    if needs_capacity and not args.capacity and not (args.models and args.serve_python):
        parser.error(
            f"{args.slo} states objectives (or --rate-fractions asks for rates) relative to the model's in-process "
            "capacity on this machine: give "
            "--models and --serve-python to measure it (also with --rest/--grpc), or --capacity FILE, or use "
            "absolute objectives (--slo loadtest/slo-absolute.toml)"
        )
    try:
        TARGET.model = args.model = args.model or served_model(args.artifacts, args.models)
    except RepositoryError as exc:
        parser.error(str(exc))
    TARGET.inputs = load_inputs(args.artifacts)
    capacity = None
    try:
        if args.capacity:
            capacity = capacity_mod.load(args.capacity)
        elif needs_capacity:
            print("measuring the model in process first (the yardstick of the relative objectives)", flush=True)
            capacity = measure_capacity(args.serve_python, args.artifacts, args.models / args.model,
                                        args.out / "capacity.json")  # fmt: skip
    except (capacity_mod.CapacityError, slo.SloError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.capacity_measured = capacity
    try:
        for scenario in args.scenarios if capacity is not None else []:
            capacity.of(capacity_mod.scenario_signature(scenario))  # a capacity of another model lacks one
    except capacity_mod.CapacityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if capacity is not None:
        print(f"capacity: {capacity.describe()}", flush=True)
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "lane": args.lane,
        "weights": TARGET.inputs.weights,
        "profile": args.profile,
        "server": f"{args.rest} + {args.grpc}" if external else f"embedded server on {args.models}",
    }
    if args.server_flags:
        machine["server"] += " with " + " ".join(args.server_flags)
    if capacity is not None:
        machine["in-process capacity"] = capacity.describe()
    print(f"loadtest on {machine['cpu']}: scenarios {', '.join(args.scenarios)}, concurrency {args.concurrency}, "
          f"{args.warmup:g} s warm-up + {args.seconds:g} s per step", flush=True)  # fmt: skip

    steps: list[Step] = []
    comparison: list[Step] = []
    searches: list[search.Search] = []
    if external:
        steps += sweep(args, args.rest.rstrip("/"), args.grpc, "as configured")
        if args.search:
            searches += search_rates(args, args.rest.rstrip("/"), args.grpc, "as configured")
        if args.current:
            comparison = compare(args, args.rest.rstrip("/"), args.grpc, args.rounds)
    else:
        for setting in [b.strip() for b in args.batching.split(",") if b.strip()]:
            with ManagedServer(args.serve_python, args.models, setting == "on", None, args.server_flags) as server:
                print(f"embedded server, batching {setting}: REST {server.rest_url}, gRPC {server.grpc_target}")
                steps += sweep(args, server.rest_url, server.grpc_target, setting)
                if args.search:
                    searches += search_rates(args, server.rest_url, server.grpc_target, setting)
        if args.current:
            specific = [int(v) for v in (args.current, args.candidate) if v.isdigit()]
            with ManagedServer(args.serve_python, args.models, True, specific or None, args.server_flags) as server:
                comparison = compare(args, server.rest_url, server.grpc_target, args.rounds)

    verdicts = slo.gate(args.slo_file, steps, comparison, capacity)
    if args.search:
        verdicts += slo.gate_rates(args.slo_file, searches, capacity)
    paths = report.write(args.out, machine, steps, comparison, verdicts, args, capacity, searches)
    print(report.verdict_text(verdicts))
    for path in paths:
        print(f"  {path}")
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
