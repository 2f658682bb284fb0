"""Where a call's time goes, per layer category: TensorFlow's step stats vs ONNX Runtime's node profile.

    python -m pt2tf_convert.profile --runtime onnxruntime --artifacts artifacts/onnx2tf --out reports/profile/ort.json
    python -m pt2tf_convert.profile --runtime savedmodel --artifacts artifacts/onnx2tf --models models/onnx2tf \
        --platform-config docker/config/platform.config --out reports/profile/tf.json

TensorFlow runs as TF Serving runs it (a Session on the MetaGraph, pt2tf_serve's Servable) with
RunOptions FULL_TRACE; ONNX Runtime with its profiler, on the same ONNX file. Each kernel's time is
put in a category (conv, pad, transpose, bias/activation, pooling, matmul, other); "framework
overhead" is a call's untraced median wall time minus the time some kernel was running (the union
of kernel intervals), i.e. the gaps between ops plus the call's entry and exit.
Each convolution is also timed on its own and named by its layer (kernel, input channels per group →
output channels, output size), which is the same in both runtimes whatever their layouts and node
names, so profile_table can put them side by side one by one.
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
# A kernel as it ran in one traced call: (op type, node name, start µs, end µs).
Kernel = tuple[str, str, float, float]
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


def conv_layer(kernel: tuple[int, int], in_per_group: int, out_channels: int, out_size: tuple[int, int]) -> str:
    """A convolution's layer as both runtimes can name it: '3×3, 64→128, 28×28' (channels in per group)."""
    return f"{kernel[0]}×{kernel[1]}, {in_per_group}→{out_channels}, {out_size[0]}×{out_size[1]}"


def convolutions(runs: list[list[Kernel]], layers: dict[str, str]) -> list[dict]:
    """Each convolution (node name → layer in `layers`) with its median ms per call, in the first call's order."""
    times: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for _, name, start, end in run:
            if name in layers:
                times[name].append((end - start) / 1e3)
    order = sorted((start, name) for _, name, start, _ in runs[0] if name in layers)
    return [{"name": name, "layer": layers[name], "ms": float(np.median(times[name]))} for _, name in order]


def summarize(kernels: list[list[Kernel]], wall: float) -> dict:
    """Per-category ms per call (median over traced calls) and the overhead, from each call's kernels."""
    per_call = []
    for run in kernels:
        by_category: dict[str, float] = defaultdict(float)
        by_op: dict[str, float] = defaultdict(float)
        for op, _, start, end in run:
            by_category[category(op)] += (end - start) / 1e3
            by_op[op] += (end - start) / 1e3
        per_call.append((by_category, by_op, busy_ms([(s, e) for _, _, s, e in run])))
    categories = sorted({c for by_category, _, _ in per_call for c in by_category})
    ops = sorted({o for _, by_op, _ in per_call for o in by_op})
    busy = float(np.median([b for _, _, b in per_call]))
    return {
        "wall_ms": wall,
        "busy_ms": busy,
        "framework_overhead_ms": max(wall - busy, 0.0),
        "categories_ms": {c: float(np.median([bc.get(c, 0.0) for bc, _, _ in per_call])) for c in categories},
        "ops_ms": {o: float(np.median([bo.get(o, 0.0) for _, bo, _ in per_call])) for o in ops},
        "ops_count": {o: sum(1 for op, *_ in kernels[0] if op == o) for o in ops},
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
            runs, layers = _nodes_per_run(events)
            runs = runs[1:]  # the first run pays for allocation
            results[str(batch)] = summarize(runs, wall) | {"convolutions": convolutions(runs, layers)}
    return {"runtime": f"ONNX Runtime {onnxruntime.__version__}", "batches": results}


def _ort_conv_layer(node_args: dict) -> str | None:
    """The layer of an ONNX Runtime Conv kernel event, from its input and output shapes (NCHW, weight OIHW)."""
    try:
        (weight,) = node_args["input_type_shape"][1].values()
        (output,) = node_args["output_type_shape"][0].values()
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if len(weight) != 4 or len(output) != 4:
        return None  # a 1-D or 3-D convolution: no 2-D layer to name
    return conv_layer((weight[2], weight[3]), weight[1], output[1], (output[2], output[3]))


def _nodes_per_run(events: list[dict]) -> tuple[list[list[Kernel]], dict[str, str]]:
    """Kernel events grouped by the model_run interval they fall in; and node → layer of each convolution."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    grouped: list[list[Kernel]] = [[] for _ in runs]
    layers: dict[str, str] = {}
    starts = [s for s, _ in runs]
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        index = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if index >= 0 and event["ts"] <= runs[index][1]:
            op = event["args"].get("op_name", "?")
            node = event["name"].removesuffix("_kernel_time")
            grouped[index].append((op, node, float(event["ts"]), float(event["ts"] + event["dur"])))
            if category(op) == "conv" and (layer := _ort_conv_layer(event["args"])):
                layers[node] = layer
    return grouped, layers


def _op_type(label: str, node_name: str) -> str:
    # timeline_label: "name = OpType(inputs)"; without one, the node name is all there is.
    if "=" in label:
        return label.split("=", 1)[1].split("(", 1)[0].strip()
    return node_name


def _tf_conv_layer(stats, graph: dict) -> str | None:
    """The layer of a TensorFlow convolution kernel, from its output's shape and its filter constant.

    Filters are [height, width, in per group, out] ([height, width, in, multiplier] for a depthwise one);
    the output is NHWC unless the node says NCHW. None when the filter is not a constant in the graph as run.
    """
    node = graph.get(stats.node_name)
    if node is None or len(node.input) < 2 or not stats.output:
        return None
    producer = graph.get(node.input[1].split(":")[0])
    if producer is None or producer.op != "Const":
        return None
    filters = [d.size for d in producer.attr["value"].tensor.tensor_shape.dim]
    output = [d.size for d in stats.output[0].tensor_description.shape.dim]
    if len(filters) != 4 or len(output) != 4:
        return None
    _, channels, height, width = output if node.attr["data_format"].s == b"NCHW" else [output[i] for i in (0, 3, 1, 2)]
    in_per_group = 1 if "Depthwise" in node.op else filters[2]
    return conv_layer((filters[0], filters[1]), in_per_group, channels, (height, width))


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
        runs, layers = [], {}
        for index in range(args.iterations):
            # The first traced call also returns the graph as it ran (after Grappler and oneDNN's rewrites), whose
            # filter constants give each convolution's kernel.
            options = tf.compat.v1.RunOptions(
                trace_level=tf.compat.v1.RunOptions.FULL_TRACE, output_partition_graphs=index == 0
            )
            metadata = tf.compat.v1.RunMetadata()
            servable.session.run(fetch, {feed: x}, options=options, run_metadata=metadata)
            graph = {node.name: node for partition in metadata.partition_graphs for node in partition.node}
            run = []
            for device in metadata.step_stats.dev_stats:
                for node in device.node_stats:
                    op = _op_type(node.timeline_label, node.node_name)
                    if op in skip:
                        continue
                    start, end = node.op_start_rel_micros, node.op_end_rel_micros
                    run.append(
                        (op, node.node_name, float(node.all_start_micros + start), float(node.all_start_micros + end))
                    )
                    if index == 0 and category(op) == "conv" and (layer := _tf_conv_layer(node, graph)):
                        layers[node.node_name] = layer
            runs.append(run)
        results[str(batch)] = summarize(runs, wall) | {"convolutions": convolutions(runs, layers)}
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
