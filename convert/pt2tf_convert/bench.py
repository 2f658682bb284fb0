"""Throughput and latency of one runtime on the export's reference inputs.

    python -m pt2tf_convert.bench --runtime onnxruntime --artifacts artifacts/onnx2tf --out reports/bench/ort.json

Runtimes: pytorch (eager, torch env), onnxruntime (CPU EP), savedmodel (a model version,
both signatures: `serving_default` on tensors, `predict_images` on JPEG bytes). Each
configuration warms up, then runs until it has both --min-iters calls and --min-seconds.
The bench session runs every runtime one after another and bench_table puts them side
by side with ratios to ONNX Runtime: figures from one run on one machine, not assertions.
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

from .artifacts import load_reference, photo_bytes
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
    "default": "TensorFlow's defaults (intra-op = cores, inter-op = cores, oneDNN on)",
    "inter-op-1": "inter-op pool of 1 thread: one op at a time, each using both cores",
    "intra-op-1": "intra-op pool of 1 thread: ops run single-threaded, two at a time",
    "no-onednn": "TF_ENABLE_ONEDNN_OPTS=0: Eigen kernels instead of oneDNN",
    "xla": "serving_default called inside tf.function(jit_compile=True)",
}


def _savedmodel(ref: dict, args: argparse.Namespace) -> list[dict]:
    import tensorflow as tf

    from .repository import versions

    if args.variant == "inter-op-1":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif args.variant == "intra-op-1":
        tf.config.threading.set_intra_op_parallelism_threads(1)

    model_dir = args.models / args.model_name
    found = versions(model_dir)
    if not found:
        raise SystemExit(f"error: {model_dir} has no version — run the convert stage first")
    loaded = tf.saved_model.load(str(model_dir / str(found[-1])))
    serving, images = loaded.signatures["serving_default"], loaded.signatures["predict_images"]
    if args.variant == "xla":
        serving = tf.function(serving, jit_compile=True)
    jpeg = next(p for p, name in zip(photo_bytes(ref), ref["photo_names"], strict=True) if name.endswith(".jpg"))
    label = f"{args.label} (TF {tf.__version__})" + ("" if args.variant == "default" else f", {args.variant}")
    results = []
    for batch in args.batch_sizes:
        x = tf.constant(batch_of(ref["inputs"], batch))
        m = measure(lambda x=x: serving(input=x)["output"].numpy(), batch, args.min_iters, args.min_seconds)
        results.append({"runtime": label, "signature": "serving_default", **m})
        if not args.images:
            continue
        b = tf.constant([jpeg] * batch)
        m = measure(lambda b=b: images(image_bytes=b)["scores"].numpy(), batch, args.min_iters, args.min_seconds)
        results.append({"runtime": label, "signature": "predict_images", **m})
    return results


RUNTIMES = {"pytorch": _pytorch, "onnxruntime": _onnxruntime, "savedmodel": _savedmodel}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runtime", required=True, choices=list(RUNTIMES))
    parser.add_argument("--artifacts", required=True, type=Path, help="export output (reference inputs, ONNX)")
    parser.add_argument("--models", type=Path, help="model repository base (savedmodel runtime)")
    parser.add_argument("--model-name", default="resnet18")
    parser.add_argument("--label", default="SavedModel", help="how the table names this runtime (e.g. the lane)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--variant", choices=list(VARIANTS), default="default", help="a performance lever to apply")
    parser.add_argument("--no-images", dest="images", action="store_false", help="skip predict_images")
    parser.add_argument("--min-iters", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write the measurements to")
    args = parser.parse_args(argv)
    if args.variant == "no-onednn" and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        parser.error("--variant no-onednn needs TF_ENABLE_ONEDNN_OPTS=0 in the environment (read at TF import)")
    ref = load_reference(args.artifacts)
    results = RUNTIMES[args.runtime](ref, args)
    for r in results:
        print(
            f"  {r['runtime']:<40} {r['signature']:<16} batch {r['batch']:>3}: "
            f"{r['images_per_second']:7.1f} img/s, median {r['latency_ms_median']:8.1f} ms",
            file=sys.stderr,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
