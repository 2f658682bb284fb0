"""Where a call's time goes, per layer category: TensorFlow's step stats vs ONNX Runtime's node profile.

    python -m pt2tf_convert.profile --runtime onnxruntime --artifacts artifacts/onnx2tf --out reports/profile/ort.json
    python -m pt2tf_convert.profile --runtime savedmodel --artifacts artifacts/onnx2tf --models models/onnx2tf \
        --platform-config docker/config/platform.config --out reports/profile/tf.json

TensorFlow runs as TF Serving runs it (a Session on the MetaGraph, pt2tf_serve's Servable) with
RunOptions FULL_TRACE; ONNX Runtime with its profiler, on the same ONNX file. Each kernel's time is
put in a category (conv, pad, transpose, bias/activation, pooling, matmul, other); "framework
overhead" is a call's untraced median wall time minus the time some kernel was running (the union
of kernel intervals), i.e. the gaps between ops plus the call's entry and exit.
profile_table puts the two side by side (reports/profile/profile.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .artifacts import load_reference
from .atomic import replace_file
from .bench import batch_of, session_config
from .runtimes import onnxruntime_session

BATCH_SIZES = (1, 32)
# (category, substrings of an op name that put it there), first match wins; names of both runtimes.
CATEGORIES = (
    ("conv", ("Conv",)),
    ("pad", ("Pad",)),
    ("transpose", ("Transpose", "Reorder")),
    ("pooling", ("Pool", "Mean")),
    ("matmul", ("MatMul", "Gemm")),
    ("bias/activation", ("BiasAdd", "Add", "Relu", "Sum", "Mul")),
)


def category(op: str) -> str:
    """The layer category of a TensorFlow op type or ONNX Runtime kernel name."""
    for name, needles in CATEGORIES:
        if any(needle in op for needle in needles):
            return name
    return "other"


def busy_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals in microseconds, as milliseconds."""
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total / 1e3


def wall_ms(call, iterations: int) -> float:
    """Median wall time of `call` in ms, untraced."""
    call()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def summarize(kernels: list[list[tuple[str, float, float]]], wall: float) -> dict:
    """Per-category ms per call (median over traced calls) and the overhead, from (op, start µs, end µs)."""
    per_call = []
    for run in kernels:
        by_category: dict[str, float] = defaultdict(float)
        by_op: dict[str, float] = defaultdict(float)
        for op, start, end in run:
            by_category[category(op)] += (end - start) / 1e3
            by_op[op] += (end - start) / 1e3
        per_call.append((by_category, by_op, busy_ms([(s, e) for _, s, e in run])))
    categories = sorted({c for by_category, _, _ in per_call for c in by_category})
    ops = sorted({o for _, by_op, _ in per_call for o in by_op})
    busy = float(np.median([b for _, _, b in per_call]))
    return {
        "wall_ms": wall,
        "busy_ms": busy,
        "framework_overhead_ms": max(wall - busy, 0.0),
        "categories_ms": {c: float(np.median([bc.get(c, 0.0) for bc, _, _ in per_call])) for c in categories},
        "ops_ms": {o: float(np.median([bo.get(o, 0.0) for _, bo, _ in per_call])) for o in ops},
        "ops_count": {o: sum(1 for op, _, _ in kernels[0] if op == o) for o in ops},
    }


def _onnxruntime(ref: dict, args: argparse.Namespace) -> dict:
    import onnxruntime

    plain = onnxruntime_session(args.artifacts / "model.onnx")
    results = {}
    with tempfile.TemporaryDirectory(prefix="pt2tf-ort-profile-") as tmp:
        for batch in args.batch_sizes:
            x = batch_of(ref["inputs"], batch)
            wall = wall_ms(lambda x=x: plain.run(["output"], {"input": x}), args.iterations)
            options = onnxruntime.SessionOptions()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / f"ort-{batch}")
            profiled = onnxruntime.InferenceSession(
                str(args.artifacts / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
            for _ in range(args.iterations + 1):
                profiled.run(["output"], {"input": x})
            events = json.loads(Path(profiled.end_profiling()).read_text())
            runs = _nodes_per_run(events)
            results[str(batch)] = summarize(runs[1:], wall)  # the first run pays for allocation
    return {"runtime": f"ONNX Runtime {onnxruntime.__version__}", "batches": results}


def _nodes_per_run(events: list[dict]) -> list[list[tuple[str, float, float]]]:
    """Kernel events grouped by the model_run interval they fall in."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    grouped: list[list[tuple[str, float, float]]] = [[] for _ in runs]
    starts = [s for s, _ in runs]
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        index = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if index >= 0 and event["ts"] <= runs[index][1]:
            op = event["args"].get("op_name", "?")
            grouped[index].append((op, float(event["ts"]), float(event["ts"] + event["dur"])))
    return grouped


def _op_type(label: str, node_name: str) -> str:
    # timeline_label: "name = OpType(inputs)"; without one, the node name is all there is.
    if "=" in label:
        return label.split("=", 1)[1].split("(", 1)[0].strip()
    return node_name


def _savedmodel(ref: dict, args: argparse.Namespace) -> dict:
    import tensorflow as tf
    from pt2tf_serve.servable import Servable

    from .repository import resolve_version

    version = resolve_version(args.models / args.model_name, args.version)
    number = int(version.name)
    servable = Servable(args.model_name, number, version, session_config(args), ["serve"])
    signature = servable.signature_defs["serving_default"]
    feed, fetch = signature.inputs["input"].name, signature.outputs["output"].name
    call = servable.session.make_callable(fetch, feed_list=[feed])
    results = {}
    skip = {"_SOURCE", "_Arg", "_Retval", "NoOp", "Const"}  # bookkeeping, not kernels
    for batch in args.batch_sizes:
        x = batch_of(ref["inputs"], batch)
        wall = wall_ms(lambda x=x: call(x), args.iterations)
        runs = []
        for _ in range(args.iterations):
            options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
            metadata = tf.compat.v1.RunMetadata()
            servable.session.run(fetch, {feed: x}, options=options, run_metadata=metadata)
            run = []
            for device in metadata.step_stats.dev_stats:
                for node in device.node_stats:
                    op = _op_type(node.timeline_label, node.node_name)
                    if op in skip:
                        continue
                    start = node.all_start_micros + node.op_start_rel_micros
                    run.append((op, float(start), float(node.all_start_micros + node.op_end_rel_micros)))
            runs.append(run)
        results[str(batch)] = summarize(runs, wall)
    servable.close()
    label = f"{args.label} (TF {tf.__version__}), version {number}"
    return {"runtime": label, "batches": results}


RUNTIMES = {"onnxruntime": _onnxruntime, "savedmodel": _savedmodel}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runtime", required=True, choices=list(RUNTIMES))
    parser.add_argument("--artifacts", required=True, type=Path, help="export output (reference inputs, ONNX)")
    parser.add_argument("--models", type=Path, help="model repository base (savedmodel runtime)")
    parser.add_argument("--model-name", default="resnet18")
    parser.add_argument("--version", type=int, help="version to profile (default: the newest)")
    parser.add_argument("--label", default="SavedModel")
    parser.add_argument("--platform-config", type=Path, help="TF Serving platform config for the Session")
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)  # read by bench.session_config
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--iterations", type=int, default=10, help="traced calls per batch size (median kept)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    from pt2tf_serve.cpu import cpu_info

    record = RUNTIMES[args.runtime](load_reference(args.artifacts), args)
    record["cpu"] = cpu_info().describe()
    if args.runtime == "savedmodel":  # which kernels TensorFlow's op names below are
        from pt2tf_serve.cpu import onednn_report

        record["onednn"] = onednn_report()[1]
    for batch, summary in record["batches"].items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(summary["categories_ms"].items(), key=lambda kv: -kv[1]))
        print(
            f"  {record['runtime']}, batch {batch}: {summary['wall_ms']:.1f} ms per call "
            f"({parts}, overhead {summary['framework_overhead_ms']:.1f})",
            file=sys.stderr,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    replace_file(args.out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
