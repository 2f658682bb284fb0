"""Served throughput against in-process throughput, measured in one run: `nox -s serve-bench`.

1. In process: the SavedModel as TF Serving runs it (a Session on its MetaGraph), batch 1 to 32;
   the best batch's img/s is the ceiling a server on this machine can approach.
2. The embedded server with docker/config's batching, then with batching off: C concurrent gRPC
   callers on `serving_default`, then gRPC and REST (base64 JPEGs) on `predict_images`.
3. Memory: each server's RSS idle after warm-up and at its peak under that load, beside a fresh
   process of the same TensorFlow that loaded the SavedModel in a Session and ran both
   signatures at batch 1 to 32.

Client and server share the machine's cores, so each served figure comes with the share of the
machine the load generator itself used. Targets (reported, never asserted): batched gRPC ≥ 0.9×
in-process best; batching on ≥ 1.3× off at the same concurrency with p99 no worse; REST
predict_images ≥ 0.8× gRPC predict_images.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
from pt2tf_convert.atomic import replace_file

from .cpu import cpu_info
from .metrics import PROCESSED_BATCH_SIZE, fetch_page
from .process import ServerProcess, config_copy, embedded_flags

MODEL = "resnet18"


def cpu_model() -> str:
    """The CPU's model name (figures differ by 2× between the machines this runs on)."""
    return cpu_info().model


@dataclass
class Figure:
    what: str
    images_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    failures: int
    client_cpu_share: float  # of the whole machine, 0..1
    batch_sizes: dict[str, float] | None = None  # from the server's metrics: mean processed batch size


def in_process(version_dir: Path, tensors: np.ndarray, seconds: float) -> dict[int, float]:
    """img/s of the Session path at each batch size, `seconds` per size."""
    import tensorflow as tf

    from .servable import Servable

    servable = Servable(MODEL, 1, version_dir, tf.compat.v1.ConfigProto(), ["serve"])
    signature = servable.signatures["serving_default"]
    rates = {}
    for batch in (1, 8, 16, 32):
        inputs = {"input": np.resize(tensors, (batch, *tensors.shape[1:]))}
        for _ in range(2):
            servable.run(signature, inputs, ("output",))
        count, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            servable.run(signature, inputs, ("output",))
            count += batch
        rates[batch] = count / (time.monotonic() - started)
        print(f"  in process, batch {batch:2d}: {rates[batch]:6.1f} img/s", flush=True)
    servable.close()
    return rates


MEMORY_BATCHES = (1, 2, 4, 8, 16, 32)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _bare_memory_child(version_dir: str, tensors: np.ndarray, photos: list[bytes], out) -> None:
    stages = {}
    import tensorflow as tf

    stages["after import"] = _rss_bytes()
    from .servable import Servable

    servable = Servable(MODEL, 1, Path(version_dir), tf.compat.v1.ConfigProto(), ["serve"])
    stages["after loading the SavedModel in a Session"] = _rss_bytes()
    default, images = servable.signatures["serving_default"], servable.signatures["predict_images"]
    for batch in MEMORY_BATCHES:
        servable.run(default, {"input": np.resize(tensors, (batch, *tensors.shape[1:]))}, tuple(default.outputs))
    stages[f"after serving_default at batch {', '.join(map(str, MEMORY_BATCHES))}"] = _rss_bytes()
    for batch in MEMORY_BATCHES:
        jpegs = np.array([photos[i % len(photos)] for i in range(batch)], dtype=object)
        servable.run(images, {"image_bytes": jpegs}, tuple(images.outputs))
    stages["after predict_images at the same batch sizes"] = _rss_bytes()
    out.send(stages)


def bare_memory(version_dir: Path, tensors: np.ndarray, photos: list[bytes]) -> dict[str, int]:
    """RSS of a fresh process of the same TensorFlow: imported, the SavedModel loaded, both signatures run."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this one's TensorFlow
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_bare_memory_child, args=(str(version_dir), tensors, photos, send))
    child.start()
    stages = receive.recv()
    child.join()
    return stages


class Sampling:
    """Calls `sample()` every `interval` seconds on a thread of its own while in its `with`, and once more on leaving
    it normally: a process stopped (SIGSTOP) until just before the `with` ends may leave before its thread samples
    again."""

    def __init__(self, interval: float):
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        if exc[0] is None:  # on an exception, a last sample would only risk hiding it (a server gone, say)
            self.sample()


class PeakMemory(Sampling):
    """Samples a server's RSS every `interval` seconds (50 ms) while in use; `peak` is the highest seen."""

    def __init__(self, server: ServerProcess, interval: float = 0.05):
        super().__init__(interval)
        self.server, self.peak = server, server.rss_bytes()

    def sample(self) -> None:
        self.peak = max(self.peak, self.server.rss_bytes())


class Load:
    """`callers` threads calling `call()` back to back; latencies of the measured window only."""

    def __init__(self, call, callers: int, images_per_call: int):
        self.call, self.callers, self.images = call, callers, images_per_call

    def run(self, warmup: float, seconds: float, what: str) -> Figure:
        latencies: list[float] = []
        failures = [0]
        lock = threading.Lock()
        start_measuring = time.monotonic() + warmup
        stop_at = start_measuring + seconds

        def caller():
            while (now := time.monotonic()) < stop_at:
                try:
                    self.call()
                    ok = True
                except Exception:
                    ok = False
                done = time.monotonic()
                if now >= start_measuring:
                    with lock:
                        if ok:
                            latencies.append(done - now)
                        else:
                            failures[0] += 1

        threads = [threading.Thread(target=caller, daemon=True) for _ in range(self.callers)]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, start_measuring - time.monotonic()))
        cpu_before, wall_before = time.process_time(), time.monotonic()
        for thread in threads:
            thread.join()
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
        return Figure(
            what,
            len(latencies) * self.images / seconds,
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 90)),
            float(np.percentile(ms, 99)),
            len(latencies),
            failures[0],
            cpu / (wall * (os.cpu_count() or 1)),
        )


def _batch_totals(rest_url: str) -> tuple[float, float]:
    """Rows and batches the server has processed so far, from its Prometheus page."""
    samples = fetch_page(rest_url)
    return samples.get(PROCESSED_BATCH_SIZE + "_sum{}", 0.0), samples.get(PROCESSED_BATCH_SIZE + "_count{}", 0.0)


def served(
    models: Path, batching: bool, tensors: np.ndarray, photos: list[bytes], args
) -> tuple[list[Figure], dict[str, int]]:
    """The served figures of one server configuration, and its RSS idle (after warm-up) and at its peak."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from .client import RestClient

    config = config_copy(Path(tempfile.mkdtemp(prefix="pt2tf-bench-")) / "config")
    extra = [] if batching else ["--enable_batching=false", "--batching_parameters_file="]
    label = "batching on" if batching else "batching off"
    figures = []
    with ServerProcess(embedded_flags(config, models, *extra)) as server:
        options = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
        channel = grpc.insecure_channel(server.grpc_target, options=options)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        tensor_request = predict_pb2.PredictRequest()
        tensor_request.model_spec.name = MODEL
        tensor_request.inputs["input"].CopyFrom(tf.make_tensor_proto(tensors[:1]))
        image_request = predict_pb2.PredictRequest()
        image_request.model_spec.name = MODEL
        image_request.model_spec.signature_name = "predict_images"
        image_request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.array(photos[:1], dtype=object)))
        image_body = orjson.dumps(
            {"signature_name": "predict_images", "instances": [{"b64": base64.b64encode(photos[0]).decode()}]}
        )
        local = threading.local()

        def rest_call():
            if not hasattr(local, "rest"):
                local.rest = RestClient(server.rest_url, timeout=60)
            status, data = local.rest.raw("POST", f"/v1/models/{MODEL}:predict", image_body)
            if status != 200:
                raise RuntimeError(data[:200])

        runs = [
            (lambda: stub.Predict(tensor_request, timeout=60), f"gRPC serving_default, {label}"),
            (lambda: stub.Predict(image_request, timeout=60), f"gRPC predict_images, {label}"),
            (rest_call, f"REST predict_images (b64 JPEG), {label}"),
        ]
        if not batching:
            runs = runs[:1]
        memory = {"idle": server.rss_bytes()}
        with PeakMemory(server) as sampler:
            for call, what in runs:
                before = _batch_totals(server.rest_url) if batching else None
                figure = Load(call, args.callers, 1).run(args.warmup, args.seconds, what)
                if before is not None:
                    rows, batches = (a - b for a, b in zip(_batch_totals(server.rest_url), before, strict=True))
                    figure.batch_sizes = {"mean processed batch": rows / batches if batches else 0.0}
                print(
                    f"  {what}: {figure.images_per_second:6.1f} img/s, p50 {figure.p50_ms:.0f} ms, "
                    f"p99 {figure.p99_ms:.0f} ms, client CPU {figure.client_cpu_share:.0%}",
                    flush=True,
                )
                figures.append(figure)
        memory["peak"] = sampler.peak
        channel.close()
    return figures, memory


def memory_lines(bare: dict[str, int], served_memory: dict[str, dict[str, int]]) -> list[str]:
    """The servers' RSS beside a bare TensorFlow process that loaded and ran the same SavedModel.

    Both are held to the bare process after both signatures ran: the server's warm-up replays
    requests before it is idle, and TensorFlow's allocator and oneDNN's caches grow with every
    new batch size run, not with serving as such.
    """
    mib = 2**20
    ran = max(bare.values())
    lines = ["", "## Memory (RSS)", "", "| process | RSS MiB | ÷ bare after running | ≤ 1.3× |", "|---|---|---|---|"]
    for stage, size in bare.items():
        lines.append(f"| bare TensorFlow, {stage} | {size / mib:.0f} | | |")
    for label, memory in served_memory.items():
        for when, key in (("idle after warm-up", "idle"), ("peak under load", "peak")):
            ratio = memory[key] / ran
            lines.append(
                f"| server, {label}, {when} | {memory[key] / mib:.0f} | {ratio:.2f}× | "
                f"{'met' if ratio <= 1.3 else 'NOT met'} |"
            )
    return lines


def report(cpu: str, rates: dict[int, float], figures: list[Figure], args) -> str:
    best_batch = max(rates, key=rates.get)
    best = rates[best_batch]
    by_what = {f.what: f for f in figures}
    on = by_what["gRPC serving_default, batching on"]
    off = by_what["gRPC serving_default, batching off"]
    rest = by_what["REST predict_images (b64 JPEG), batching on"]
    grpc_images = by_what["gRPC predict_images, batching on"]
    lines = [
        f"# Served throughput, one run ({cpu}, {os.cpu_count()} cores)",
        "",
        f"{args.callers} concurrent callers, {args.seconds:.0f} s measured after {args.warmup:.0f} s warm-up; "
        "one image per request. Client and server share the cores: `client CPU` is the load generator's share of "
        "the whole machine.",
        "",
        "| path | img/s | p50 ms | p90 ms | p99 ms | failures | client CPU | mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch, rate in rates.items():
        lines.append(f"| in process, Session, batch {batch} | {rate:.1f} | | | | | | |")
    for f in figures:
        mean = f"{f.batch_sizes['mean processed batch']:.1f}" if f.batch_sizes else "–"
        lines.append(
            f"| {f.what} | {f.images_per_second:.1f} | {f.p50_ms:.0f} | {f.p90_ms:.0f} | {f.p99_ms:.0f} | "
            f"{f.failures} | {f.client_cpu_share:.0%} | {mean} |"
        )

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    gain = on.images_per_second / off.images_per_second
    ceiling = on.images_per_second / best
    rest_ratio = rest.images_per_second / grpc_images.images_per_second
    lines += [
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| batched gRPC ≥ 0.9× in-process best (batch {best_batch}, {best:.1f} img/s) | {ceiling:.2f}× | "
        f"{verdict(ceiling >= 0.9)} |",
        f"| batching on ≥ 1.3× off | {gain:.2f}× | {verdict(gain >= 1.3)} |",
        f"| p99 with batching no worse than without | {on.p99_ms:.0f} vs {off.p99_ms:.0f} ms | "
        f"{verdict(on.p99_ms <= off.p99_ms)} |",
        f"| REST predict_images ≥ 0.8× gRPC predict_images | {rest_ratio:.2f}× | {verdict(rest_ratio >= 0.8)} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pt2tf-serve-bench", description=__doc__)
    parser.add_argument("--models", type=Path, required=True, help="model repository: <models>/resnet18/<version>/")
    parser.add_argument("--artifacts", type=Path, required=True, help="the export's output (reference inputs)")
    parser.add_argument("--out", type=Path, required=True, help="report path (.md; a .json is written beside)")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args(argv)

    from pt2tf_convert.artifacts import load_reference, photo_bytes
    from pt2tf_convert.repository import versions

    if not versions(args.models / MODEL):
        parser.error(f"no model version under {args.models / MODEL}: run nox -s convert first")
    version_dir = args.models / MODEL / str(max(versions(args.models / MODEL)))
    reference = load_reference(args.artifacts)
    tensors = reference["inputs"][:8]
    jpegs = [p for p in photo_bytes(reference) if p[:2] == b"\xff\xd8"]  # JPEG files, as clients send photos
    cpu = cpu_model()
    print(f"serve-bench on {cpu}: in process, then served (version {version_dir.name})", flush=True)
    rates = in_process(version_dir, tensors, args.seconds / 2)
    bare = bare_memory(version_dir, tensors, jpegs)
    print("  bare TensorFlow RSS: " + ", ".join(f"{k} {v >> 20} MiB" for k, v in bare.items()), flush=True)
    on, memory_on = served(args.models, True, tensors, jpegs, args)
    off, memory_off = served(args.models, False, tensors, jpegs, args)
    figures = on + off
    served_memory = {"batching on": memory_on, "batching off": memory_off}
    text = report(cpu, rates, figures, args) + "\n".join(memory_lines(bare, served_memory)) + "\n"
    print(text)
    replace_file(args.out, text)
    payload = {
        "cpu": cpu,
        "in_process": rates,
        "served": [asdict(f) for f in figures],
        "callers": args.callers,
        "bare_rss_bytes": bare,
        "served_rss_bytes": served_memory,
    }
    replace_file(args.out.with_suffix(".json"), json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
