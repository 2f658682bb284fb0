"""Throughput and latency of one runtime on the export's reference inputs.

    python -m pt2tf_convert.bench --runtime onnxruntime --artifacts artifacts/onnx2tf --out reports/bench/ort.json

Runtimes: pytorch (eager, torch env), onnxruntime (CPU EP), savedmodel (a model version).
A SavedModel is called two ways: as TF Serving and the embedded server run it, a Session on
its MetaGraph (pt2tf_serve's Servable, with the session config of --platform-config), both
signatures (`serving_default` on tensors, `predict_images` on JPEG bytes); and through
`tf.saved_model.load(...).signatures["serving_default"]`. The same process also runs ONNX
Runtime on the same ONNX file, interleaved with the SavedModel over --rounds rounds, so each
ratio compares figures taken minutes apart at most, on a machine others share.

Each configuration warms up, then runs until it has both --min-iters calls and --min-seconds;
a round measures every configuration once, and the median round is reported. The bench session
runs every runtime one after another and bench_table puts them side by side with ratios to
ONNX Runtime: figures from one run on one machine, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pt2tf_serve.cpu import CONTRACTION_ENV, ONEDNN_ENV

from .artifacts import load_reference, photo_bytes
from .atomic import replace_file
from .runtimes import onnxruntime_session

BATCH_SIZES = (1, 8, 32)


def measure(call: Callable[[], object], batch: int, min_iters: int, min_seconds: float, warmup: int = 2) -> dict:
    """Latency per call (median, p90) and throughput in images per second."""
    for _ in range(warmup):
        call()
    latencies = []
    started = time.perf_counter()
    while len(latencies) < min_iters or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    latencies_ms = np.array(latencies) * 1e3
    return {
        "batch": batch,
        "calls": len(latencies),
        "latency_ms_median": float(np.median(latencies_ms)),
        "latency_ms_p90": float(np.percentile(latencies_ms, 90)),
        "images_per_second": float(batch * len(latencies) / (latencies_ms.sum() / 1e3)),
    }


def batch_of(inputs: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * reps)[:batch])


def _pytorch(ref: dict, args: argparse.Namespace) -> list[dict]:
    import torch

    from .model import build_model

    model, _ = build_model()
    results = []
    with torch.inference_mode():
        for batch in args.batch_sizes:
            x = torch.from_numpy(batch_of(ref["inputs"], batch))
            m = measure(lambda x=x: model(x), batch, args.min_iters, args.min_seconds)
            results.append({"runtime": f"PyTorch {torch.__version__} eager", "signature": "-", **m})
    return results


def _onnxruntime(ref: dict, args: argparse.Namespace) -> list[dict]:
    import onnxruntime

    session = onnxruntime_session(args.artifacts / "model.onnx")
    results = []
    for batch in args.batch_sizes:
        x = batch_of(ref["inputs"], batch)
        m = measure(lambda x=x: session.run(["output"], {"input": x}), batch, args.min_iters, args.min_seconds)
        results.append({"runtime": f"ONNX Runtime {onnxruntime.__version__}", "signature": "-", **m})
    return results


# Levers tried on the SavedModel runtime; each is one process, so thread pools start fresh.
VARIANTS = {
    "default": "the session config of --platform-config (TensorFlow's defaults without one)",
    "inter-op-1": "inter-op pool of 1 thread: one op at a time, each using both cores",
    "intra-op-1": "intra-op pool of 1 thread: ops run single-threaded, two at a time",
    "onednn-on": "TF_ENABLE_ONEDNN_OPTS=1: oneDNN's kernels on any CPU (by default only with VNNI, BF16 or AMX)",
    "no-onednn": "TF_ENABLE_ONEDNN_OPTS=0: Eigen's kernels, its contractions by oneDNN's sgemm",
    "eigen-contraction": "TF_ENABLE_ONEDNN_OPTS=0 and TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=0: Eigen's kernels only",
    "xla": "XLA: global_jit_level ON_1 in the Session's config; jit_compile=True on the loaded signature",
    "bf16": "oneDNN bf16 auto mixed precision (auto_mixed_precision_onednn_bfloat16: ON)",
}
# The environment a variant runs with, set before TensorFlow is imported: TensorFlow reads both once.
VARIANT_ENV = {
    "onednn-on": {ONEDNN_ENV: "1"},
    "no-onednn": {ONEDNN_ENV: "0"},
    "eigen-contraction": {ONEDNN_ENV: "0", CONTRACTION_ENV: "0"},
}
SESSION, LOADED = "Session (as TF Serving)", "tf.saved_model.load"


def session_config(args: argparse.Namespace):
    """The ConfigProto the Session path gets: --platform-config's, with the variant's lever applied."""
    import tensorflow as tf
    from pt2tf_serve.config import apply_mixed_precision, load_platform_config

    config = tf.compat.v1.ConfigProto()
    if args.platform_config:
        config = load_platform_config(args.platform_config, os.cpu_count() or 1).session_config
    if args.variant == "inter-op-1":
        config.inter_op_parallelism_threads = 1
    elif args.variant == "intra-op-1":
        config.intra_op_parallelism_threads = 1
    elif args.variant == "xla":
        config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
    elif args.variant == "bf16":
        apply_mixed_precision(config, "bfloat16", "--variant bf16")
    return config


def _jit_compiled(serving, ref: dict, args: argparse.Namespace):
    """The loaded signature compiled whole by XLA, or None where XLA refuses one of its ops (a converted graph's
    MaxPool with explicit padding, for one): that path is then not measured, and the record says why."""
    import tensorflow as tf

    compiled = tf.function(serving, jit_compile=True)
    try:
        compiled(input=tf.constant(batch_of(ref["inputs"], 1)))
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as exc:
        reason = str(exc).strip().splitlines()[0]
        args.not_measured = {LOADED: f"XLA cannot compile the whole signature ({reason})"}
        print(f"  {LOADED}, jit_compile=True: not measured: {reason}", file=sys.stderr)
        return None
    return compiled


def _savedmodel(ref: dict, args: argparse.Namespace) -> list[dict]:
    import onnxruntime
    import tensorflow as tf
    from pt2tf_serve.config import uses_bf16
    from pt2tf_serve.servable import Servable

    from .repository import resolve_version

    config = session_config(args)
    try:  # the loaded-signature path runs in TensorFlow's eager context: give it the same pools
        tf.config.threading.set_inter_op_parallelism_threads(config.inter_op_parallelism_threads)
        tf.config.threading.set_intra_op_parallelism_threads(config.intra_op_parallelism_threads)
    except RuntimeError:  # TensorFlow already ran in this process (a test): its eager pools stay
        pass
    if uses_bf16(config):
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})

    version = resolve_version(args.models / args.model_name, args.version)
    number = int(version.name)
    servable = Servable(args.model_name, number, version, config, ["serve"])
    sessions = {name: servable.signatures[name] for name in ("serving_default", "predict_images")}
    serving = tf.saved_model.load(str(version)).signatures["serving_default"] if args.loaded else None
    if serving is not None and args.variant == "xla":
        serving = _jit_compiled(serving, ref, args)
    ort = onnxruntime_session(args.artifacts / "model.onnx")
    jpeg = next(p for p, name in zip(photo_bytes(ref), ref["photo_names"], strict=True) if name.endswith(".jpg"))
    label = f"{args.label} (TF {tf.__version__})" + ("" if args.variant == "default" else f", {args.variant}")
    ort_label = f"ONNX Runtime {onnxruntime.__version__}, same process"

    def session_call(signature: str, key: str, value: np.ndarray, output: str):
        spec = sessions[signature]
        return lambda: servable.run(spec, {key: value}, (output,))

    calls = []  # (runtime, signature, path, batch, call)
    for batch in args.batch_sizes:
        x = batch_of(ref["inputs"], batch)
        calls.append((ort_label, "-", "-", batch, lambda x=x: ort.run(["output"], {"input": x})))
        calls.append((label, "serving_default", SESSION, batch, session_call("serving_default", "input", x, "output")))
        if serving is not None:
            tensor = tf.constant(x)
            calls.append((label, "serving_default", LOADED, batch, lambda t=tensor: serving(input=t)["output"].numpy()))
        if args.images:
            b = np.array([jpeg] * batch, dtype=object)
            calls.append(
                (label, "predict_images", SESSION, batch, session_call("predict_images", "image_bytes", b, "scores"))
            )
    rounds: dict[tuple, list[dict]] = {}
    for number in range(args.rounds):
        print(f"  round {number + 1}/{args.rounds}", file=sys.stderr)
        for runtime, signature, path, batch, call in calls:
            m = measure(call, batch, args.min_iters, args.min_seconds)
            rounds.setdefault((runtime, signature, path, batch), []).append(m)
    servable.close()
    results = []
    for (runtime, signature, path, _), measured in rounds.items():
        median = sorted(measured, key=lambda m: m["images_per_second"])[len(measured) // 2]
        spread = [round(m["images_per_second"], 1) for m in measured]
        results.append(
            {"runtime": runtime, "signature": signature, "path": path, **median, "rounds_images_per_second": spread}
        )
    return results


def machine(args: argparse.Namespace) -> dict:
    """The CPU, its relevant flags, the thread settings and, for TensorFlow, oneDNN's state these figures had."""
    from pt2tf_serve.cpu import cpu_info, onednn_report, onednn_state

    info = cpu_info()
    threads = {"cores": info.cores}
    record = {"cpu": info.describe(), "cpu_model": info.model, "cpu_flags": info.relevant_flags, "threads": threads}
    if args.runtime == "savedmodel":
        config = session_config(args)
        threads |= {
            "tensorflow_intra_op": config.intra_op_parallelism_threads or "TF default (cores)",
            "tensorflow_inter_op": config.inter_op_parallelism_threads or "TF default (cores)",
            "platform_config": str(args.platform_config) if args.platform_config else None,
        }
        state = onednn_state(info)
        running, line = onednn_report(state)
        record |= {"variant": args.variant, "onednn": line, "onednn_on": running, "contraction": state.contraction}
        if vars(args).get("not_measured"):  # set by the run: a path the lever could not run
            record["not_measured"] = args.not_measured
    if args.runtime != "pytorch":
        threads["onnxruntime"] = "default (intra-op = cores)"
    else:
        import torch

        threads["torch"] = torch.get_num_threads()
    return record


RUNTIMES = {"pytorch": _pytorch, "onnxruntime": _onnxruntime, "savedmodel": _savedmodel}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runtime", required=True, choices=list(RUNTIMES))
    parser.add_argument("--artifacts", required=True, type=Path, help="export output (reference inputs, ONNX)")
    parser.add_argument("--models", type=Path, help="model repository base (savedmodel runtime)")
    parser.add_argument("--model-name", default="resnet18")
    parser.add_argument("--version", type=int, help="model version to bench (default: the newest)")
    parser.add_argument("--label", default="SavedModel", help="how the table names this runtime (e.g. the lane)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--variant", choices=list(VARIANTS), default="default", help="a performance lever to apply")
    parser.add_argument(
        "--platform-config", type=Path, help="a TF Serving platform config file whose session config the Session gets"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (savedmodel runtime)")
    parser.add_argument("--no-images", dest="images", action="store_false", help="skip predict_images")
    parser.add_argument(
        "--no-loaded", dest="loaded", action="store_false", help="skip the tf.saved_model.load path (Session only)"
    )
    parser.add_argument("--min-iters", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write the measurements to")
    args = parser.parse_args(argv)
    if args.variant in VARIANT_ENV:
        if "tensorflow" in sys.modules:  # its oneDNN switch and contraction kernel are already chosen
            parser.error(f"--variant {args.variant} must set its environment before TensorFlow is imported")
        os.environ.update(VARIANT_ENV[args.variant])
    if args.variant == "bf16":
        from pt2tf_serve.cpu import bf16_refusal

        refusal = bf16_refusal()
        if refusal:
            parser.error(f"--variant bf16: {refusal}")
    ref = load_reference(args.artifacts)
    results = RUNTIMES[args.runtime](ref, args)
    for r in results:
        print(
            f"  {r['runtime']:<40} {r['signature']:<16} {r.get('path', '-'):<24} batch {r['batch']:>3}: "
            f"{r['images_per_second']:7.1f} img/s, median {r['latency_ms_median']:8.1f} ms",
            file=sys.stderr,
        )
    record = {"machine": machine(args), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    replace_file(args.out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
