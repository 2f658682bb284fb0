"""Served gRPC throughput of one model at C concurrent callers, as one figure: `nox -s models` runs it per cell.

    python -m pt2tf_serve.served_rate --models models/onnx2tf --model mobilenet_v3_small \\
        --artifacts artifacts/onnx2tf --callers 16 --out served.json

Starts the embedded server on free loopback ports with docker/config's flags and config files (batching on; no
load retries), serving `--model` from `--models`, then C threads call gRPC Predict on `serving_default` back to
back, one reference image per request (pt2tf_serve.bench's Load: warm-up discarded, then a measured window). The
server is stopped when the measurement ends, fails or is interrupted (SIGTERM included). A failed request fails
the run: a throughput with errors in it is not the model's.

On a shared machine this process or the server may be stopped (SIGSTOP) for minutes: a measurement during which
either was stopped is discarded and taken again (up to 3 times), since its rate and its deadline failures are the
stop's, not the model's; the figure says how many were discarded.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from pt2tf_convert.atomic import replace_file

from .bench import Sampling
from .process import ServerProcess, config_copy, embedded_flags, process_state

# A version that fails to load fails the stage at once: TF Serving's default (5 retries, a minute apart) would
# spend 5 minutes on a file that verify has just read, and a retry changes nothing in it.
NO_RETRY = ("--max_num_load_retries=0",)


ATTEMPTS = 3  # measurements taken at most, when the ones before were stopped
TICK_S = 0.2
STALL_S = 5.0  # a tick this late: the process was stopped, not slow (a niced thread waits milliseconds, not seconds)


class ServedRateError(RuntimeError):
    """The server did not start, requests failed under load, or every measurement was stopped."""


class Stops(Sampling):
    """While in its `with`: the seconds this process spent stopped (its own ticks came late by STALL_S or more) or
    the server did (its /proc state was T, stopped)."""

    def __init__(self, server_pid: int):
        super().__init__(TICK_S)
        self.server_pid, self.seconds = server_pid, 0.0
        self._last = time.monotonic()

    def sample(self) -> None:
        now = time.monotonic()
        if now - self._last >= STALL_S or process_state(self.server_pid) in ("T", "t"):
            self.seconds += now - self._last
        self._last = now


def _stop_on_sigterm() -> None:
    """A SIGTERM (a timeout of whoever started us) unwinds like Ctrl-C, so the server is stopped on the way out."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def measure(
    models: Path, model: str, artifacts: Path, callers: int, warmup: float, seconds: float, deadline: float = 60.0
) -> dict:
    """Serve `models`, load it with `callers` gRPC callers (each call given `deadline` seconds), stop the server;
    the figure, the mean batch and how many measurements were discarded because a process was stopped."""
    import grpc
    import tensorflow as tf
    from pt2tf_convert.artifacts import load_reference
    from pt2tf_convert.repository import versions
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from .bench import Load, _batch_totals

    def _metrics(rest_url: str) -> tuple[float, float]:
        """The server's batch counters; a metrics page that does not answer is this run's error, named."""
        try:
            return _batch_totals(rest_url)
        except OSError as error:
            raise ServedRateError(f"the server's metrics at {rest_url} did not answer: {error}") from error

    if not versions(models / model):
        raise ServedRateError(f"no model version under {models / model}: convert {model} into {models} first")
    tensor = load_reference(artifacts)["inputs"][:1]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs["input"].CopyFrom(tf.make_tensor_proto(tensor))
    errors: list[str] = []  # every failed call's error, warm-up included (Load counts the measured window's only)
    with (
        tempfile.TemporaryDirectory(prefix="pt2tf-served-rate-") as tmp,
        ServerProcess(embedded_flags(config_copy(Path(tmp) / "config", model=model), models, *NO_RETRY)) as server,
    ):  # the server is stopped on leaving, also on an exception
        channel = grpc.insecure_channel(server.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call():
            try:
                stub.Predict(request, timeout=deadline)
            except grpc.RpcError as error:
                errors.append(f"{error.code().name}: {error.details()}")  # list.append: one step under the GIL
                raise
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
                raise

        try:
            stopped = []
            for _ in range(ATTEMPTS):
                errors.clear()
                with Stops(server.process.pid) as stops:
                    before = _metrics(server.rest_url)
                    figure = Load(call, callers, 1).run(warmup, seconds, f"gRPC serving_default, {callers} callers")
                    rows, batches = (a - b for a, b in zip(_metrics(server.rest_url), before, strict=True))
                if not stops.seconds:
                    break
                stopped.append(stops.seconds)
                print(
                    f"  measurement {len(stopped)} of at most {ATTEMPTS} discarded: this process or the server was "
                    f"stopped for {stops.seconds:.0f} s of it ({figure.requests} answered in its window, {len(errors)} "
                    "failed)",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                raise ServedRateError(
                    f"each of {ATTEMPTS} measurements was stopped for a while (this process or the server: "
                    f"{', '.join(f'{gap:.0f} s' for gap in stopped)}): no figure of the model; measure again when "
                    "nothing stops them"
                )
        finally:
            channel.close()
    if errors:  # Load's failures are among them
        raise ServedRateError(
            f"{len(errors)} gRPC requests failed, {figure.failures} of {figure.failures + figure.requests} in the "
            f"measured window (first: {errors[0]}); see the server's log by serving {models} yourself"
        )
    if not figure.requests:
        raise ServedRateError(f"no request was answered within {seconds:g} s after {warmup:g} s of warm-up")
    return {
        **asdict(figure),
        "callers": callers,
        "mean_processed_batch": rows / batches if batches else None,
        "discarded_stopped_measurements": len(stopped),
    }


def _positive(kind: type):
    """An argparse type: a number above zero (a rate over no callers or no seconds is no figure)."""

    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: must be above 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-served-rate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, required=True, help="model repository: <models>/<model>/<version>/")
    parser.add_argument("--model", required=True, help="the served name (the model's folder under --models)")
    parser.add_argument("--artifacts", type=Path, required=True, help="the export's output (reference inputs)")
    parser.add_argument("--callers", type=_positive(int), default=16, help="concurrent gRPC Predict callers")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the measured window")
    parser.add_argument("--seconds", type=_positive(float), default=8.0, help="the measured window")
    parser.add_argument("--deadline", type=_positive(float), default=60.0, help="seconds each gRPC call may take")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figure")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup:g}: must be 0 or more seconds")
    _stop_on_sigterm()
    try:
        figure = measure(
            args.models, args.model, args.artifacts, args.callers, args.warmup, args.seconds, args.deadline
        )
    except RuntimeError as error:  # ServedRateError, and ServerProcess's "exited before it was ready"
        lines = str(error).splitlines()
        print(str(error), file=sys.stderr)  # the server's own last lines, when it did not start
        print(f"error: {lines[0]}" + (f" {lines[-1].strip()}" if len(lines) > 1 else ""), file=sys.stderr)
        return 1
    print(
        f"  served, {args.callers} gRPC callers: {figure['images_per_second']:.1f} img/s, p50 {figure['p50_ms']:.0f} ms"
        f", mean batch {figure['mean_processed_batch'] or 0:.1f}",
        file=sys.stderr,
    )
    replace_file(args.out, json.dumps(figure, indent=1) + "\n")  # a reader never sees half a figure
    return 0


if __name__ == "__main__":
    sys.exit(main())
