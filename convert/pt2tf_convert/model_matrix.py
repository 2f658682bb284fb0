"""Architectures × lanes: export → convert → verify each torchvision classifier on every lane, one cell each,
then how fast each passing cell runs.

    python -m pt2tf_convert.model_matrix --out reports/models \\
        --lane onnx2tf:dynamo:18:onnx2tf:<export env python>:<lane env python> ... \\
        --models resnet18 mobilenet_v3_small ... [--no-speed] [--platform-config docker/config/platform.config]

Standard library only: it runs in the tools env (nox -s models) and runs each stage as its own process in
the stage's locked env, as the stage sessions do. A lane's export is shared by the lanes with the same
exporter and opset. Each cell is the parity figures of verify, or the stage that failed and the error's
line. A passing cell also gets the transposes optimize.py left (the manifest's graph_rewrite), and, unless
--no-speed, two more stages in the lane's env: `bench` (pt2tf_convert.bench: the Session path, as TF Serving
runs the model, interleaved with ONNX Runtime in the same process over a few rounds) and `serve`
(pt2tf_serve.served_rate: the embedded server with docker/config's settings, 16 gRPC callers). A speed stage
that fails is recorded with its error like the others. Writes <out>/results.json, <out>.md
(reports/models.md) and <out>.html (the tables and a chart drawn by pt2tf_convert.matrix_chart in an env
with matplotlib, --chart-python), each to a temporary file renamed into place. Every cell whose model and
lane a run does not take is kept from the previous results.json, so a few can be run again; a lane no longer
run stays a column until results.json is removed.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import replace_file
from .bench_table import SESSION_PATH, ratios

STAGE_TIMEOUT_S = 1800
POLL_S = 2.0
SPEED_TIMEOUT_S = 900  # one bench or serve stage; a larger model's bench takes ~1 min on two cores
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


@dataclass(frozen=True)
class LaneSpec:
    name: str
    exporter: str
    opset: int
    converter: str
    export_python: str
    python: str  # the lane's env: convert, verify, bench and serve

    @classmethod
    def parse(cls, text: str) -> LaneSpec:
        parts = text.split(":")
        if len(parts) != 6:
            raise argparse.ArgumentTypeError(f"--lane {text}: want name:exporter:opset:converter:export_py:lane_py")
        name, exporter, opset, converter, export_python, python = parts
        return cls(name, exporter, int(opset), converter, export_python, python)


def error_line(stderr: str) -> str:
    """The line that says what went wrong: the tool's `error:` line, else a traceback's exception line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else "no output"


_ONNX_PATH = re.compile(r"/\S*/(model\.onnx)")
_TELLING = ("must be", "not implemented", "not supported", "unsupported", "error:")
_CODE = ("raise ", "return ", "File ", "output_ops", "in user code")
_NODE = re.compile(r"name=\\*'node_([A-Za-z]+_\d+)")


def headline(error: str) -> str:
    """An error whose message carries a converter's traceback (as one repr with \\n in it): its prefix, the line
    that says what is wrong, and the ONNX node when the converter names it. Temporary paths are cut."""
    error = _ONNX_PATH.sub(r"\1", error)
    if "\\n" not in error:
        return error
    parts = [part.strip(" \\t'\"()") for part in error.split("\\n")]
    parts = [part for part in parts if part and not part.startswith(_CODE)]
    prefix = re.split(r" \(|: ", parts[0], maxsplit=1)[0]
    telling = next((part for part in parts[1:] if any(word in part.lower() for word in _TELLING)), parts[-1])
    node = _NODE.search(error)
    return f"{prefix}: {telling}".replace("\\'", "'") + (f" (ONNX node {node.group(1)})" if node else "")


def _run(
    python: str, args: list[str], env: dict[str, str], timeout: float = STAGE_TIMEOUT_S
) -> tuple[bool, float, str]:
    """Run a stage to completion or `timeout` seconds of running time: (passed, seconds, error line)."""
    started = time.monotonic()
    left = timeout
    with subprocess.Popen(
        [python, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        while True:
            tick = time.monotonic()
            try:
                _, stderr = process.communicate(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:  # retrying communicate() loses no output
                waited = time.monotonic() - tick
                # Far longer than asked: this process was stopped (SIGSTOP on a shared machine), not the stage slow.
                left -= waited if waited < 10 * POLL_S else POLL_S
            if left <= 0:
                process.terminate()  # SIGTERM first: the serve stage stops its server on the way out
                try:
                    # longer than ServerProcess.stop gives its server (60 s) before it kills the server's group
                    process.communicate(timeout=150)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate()
                return False, time.monotonic() - started, f"timed out after {timeout:.0f} s"
    seconds = time.monotonic() - started
    return process.returncode == 0, seconds, "" if process.returncode == 0 else error_line(stderr)


def _figures(report: dict) -> dict:
    """What a cell shows from verify's parity.json: the worst over batch sizes."""

    def worst(pair: str, metric: str, pick=max) -> float:
        return pick(report["parity"][batch][pair][metric] for batch in report["parity"])

    pre = report["preprocessing"]
    return {
        "savedmodel_vs_pytorch_max_abs": worst("pytorch_vs_savedmodel", "max_abs"),
        "savedmodel_vs_pytorch_max_rel": worst("pytorch_vs_savedmodel", "max_rel"),
        "savedmodel_vs_onnxruntime_max_abs": worst("onnxruntime_vs_savedmodel", "max_abs"),
        "top1_agreement": worst("pytorch_vs_savedmodel", "top1_agreement", min),
        "pytorch_float32_rounding": report.get("parity_bounds", {}).get("pytorch_float32_rounding"),
        "distinct_top1": report["answers"]["distinct_top1"],
        "min_margin": report["answers"]["min_margin"],
        "preprocessing": f"{pre['spec']['interpolation']} {pre['spec']['resize']}→{pre['spec']['crop']}",
        "preprocessing_pixel_max_abs": pre["pixel_max_abs"],
        "preprocessing_top1": pre["probabilities"]["top1_agreement"],
        "failures": report["failures"],
    }


@dataclass(frozen=True)
class Speed:
    """How the speed stages measure: short, on a shared two-core machine, but with rounds enough for a ratio."""

    platform_config: str | None = None  # docker/config/platform.config: the session config TF Serving gets
    batch_sizes: tuple[int, ...] = (1, 8)  # on two cores the best batch is reached by 8 (DESIGN: 1.2× batch 1)
    rounds: int = 3  # Session and ONNX Runtime interleaved, the median round kept
    min_seconds: float = 1.0  # per configuration and round
    min_iters: int = 3
    callers: int = 16  # concurrent gRPC Predict callers on the served model
    warmup: float = 3.0
    seconds: float = 8.0

    def bench_args(self) -> list[str]:
        args = ["--batch-sizes", *map(str, self.batch_sizes), "--rounds", str(self.rounds)]
        args += ["--min-seconds", str(self.min_seconds), "--min-iters", str(self.min_iters), "--no-images"]
        args += ["--no-loaded"]
        return args + (["--platform-config", self.platform_config] if self.platform_config else [])

    def serve_args(self) -> list[str]:
        return ["--callers", str(self.callers), "--warmup", str(self.warmup), "--seconds", str(self.seconds)]


def session_figures(bench: dict) -> dict:
    """From pt2tf_convert.bench's JSON: the Session path's best batch and batch-1 latency, each beside the ONNX
    Runtime measured in the same process, and their ratios."""
    results = bench["results"]
    ort = {r["batch"]: r for r in results if r["runtime"].startswith("ONNX Runtime") and "same process" in r["runtime"]}
    session = {r["batch"]: r for r in results if r["signature"] == "serving_default" and r.get("path") == SESSION_PATH}
    if not ort or not session:
        raise ValueError("the bench record has no Session and same-process ONNX Runtime rows for serving_default")
    best, throughput, latency = ratios(session, ort)
    best_ort = max(ort.values(), key=lambda r: r["images_per_second"])
    figures = {
        "best_batch": best["batch"],
        "images_per_second": best["images_per_second"],
        "onnxruntime_best_batch": best_ort["batch"],
        "onnxruntime_images_per_second": best_ort["images_per_second"],
        "throughput_vs_onnxruntime": throughput,
        "rounds_images_per_second": best.get("rounds_images_per_second"),
        "onednn": bench.get("machine", {}).get("onednn"),
    }
    if latency is not None:
        figures |= {
            "batch1_latency_ms": session[1]["latency_ms_median"],
            "onnxruntime_batch1_latency_ms": ort[1]["latency_ms_median"],
            "batch1_latency_vs_onnxruntime": latency,
        }
    return figures


def measure_speed(model: str, lane: LaneSpec, artifacts: Path, models: Path, work: Path, env: dict, speed: Speed):
    """The bench and serve stages of a converted cell, each in the lane's env: (speed record, seconds per stage).

    Each stage's figures, or the stage and its error: one failing does not keep the other from running."""
    record: dict = {"settings": {"batch_sizes": list(speed.batch_sizes), "rounds": speed.rounds,
                                 "callers": speed.callers, "served_seconds": speed.seconds}}  # fmt: skip
    seconds = {}
    out = work / "speed" / lane.name
    args = ["-m", "pt2tf_convert.bench", "--runtime", "savedmodel", "--artifacts", str(artifacts)]
    args += ["--models", str(models), "--model-name", model, "--label", f"lane {lane.name}", *speed.bench_args()]
    result = _run(lane.python, [*args, "--out", str(out / "bench.json")], env, SPEED_TIMEOUT_S)
    _progress(model, lane.name, "bench", result)
    seconds["bench"] = round(result[1], 1)
    try:
        record["session"] = session_figures(json.loads((out / "bench.json").read_text())) if result[0] else None
    except (OSError, ValueError, KeyError) as error:
        result = (False, result[1], f"bench wrote no usable record: {error}")
    if not result[0]:
        record["session"] = {"stage": "bench", "error": result[2]}
    args = ["-m", "pt2tf_serve.served_rate", "--models", str(models), "--model", model]
    args += ["--artifacts", str(artifacts), *speed.serve_args(), "--out", str(out / "served.json")]
    result = _run(lane.python, args, env, SPEED_TIMEOUT_S)
    _progress(model, lane.name, "serve", result)
    seconds["serve"] = round(result[1], 1)
    try:
        record["served"] = json.loads((out / "served.json").read_text()) if result[0] else None
    except (OSError, ValueError) as error:
        result = (False, result[1], f"serve wrote no usable record: {error}")
    if not result[0]:
        record["served"] = {"stage": "serve", "error": result[2]}
    return record, seconds


def run_cell(
    model: str, lane: LaneSpec, work: Path, exports: dict, env: dict[str, str], speed: Speed | None = None
) -> dict:
    """Export (shared per exporter and opset), convert and verify `model` on `lane`; then, when it passed and
    `speed` is given, bench and serve it."""
    cell: dict = {"model": model, "lane": lane.name, "seconds": {}}
    key = (lane.exporter, lane.opset)
    artifacts = work / f"export-{lane.exporter}-{lane.opset}"
    if key not in exports:
        args = ["-m", "pt2tf_convert.export", "--lane", lane.name, "--exporter", lane.exporter]
        args += ["--opset", str(lane.opset), "--out", str(artifacts), "--model", model]
        exports[key] = _run(lane.export_python, args, env)
        _progress(model, lane.name, "export", exports[key])
    ok, seconds, error = exports[key]
    cell["seconds"]["export"] = round(seconds, 1)
    if not ok:
        return {**cell, "stage": "export", "passed": False, "error": error}
    models = work / "models" / lane.name
    args = ["-m", "pt2tf_convert.convert", "--lane", lane.name, "--converter", lane.converter]
    result = _run(lane.python, [*args, "--artifacts", str(artifacts), "--models", str(models)], env)
    _progress(model, lane.name, "convert", result)
    cell["seconds"]["convert"] = round(result[1], 1)
    if not result[0]:
        return {**cell, "stage": "convert", "passed": False, "error": result[2]}
    manifest = json.loads(next((models / model).glob("*/assets.extra/pt2tf_manifest.json")).read_text())
    cell["graph_rewrite"] = manifest.get("graph_rewrite")
    cell["onnx_rewrite"] = manifest.get("onnx_rewrite")  # pt2tf_convert.onnx_rewrite, before the converter
    reports = work / "reports" / lane.name
    args = ["-m", "pt2tf_convert.verify", "--lane", lane.name, "--artifacts", str(artifacts)]
    result = _run(lane.python, [*args, "--models", str(models), "--reports", str(reports)], env)
    _progress(model, lane.name, "verify", result)
    cell["seconds"]["verify"] = round(result[1], 1)
    parity = reports / "parity.json"
    if not parity.is_file():  # verify stopped before its report
        return {**cell, "stage": "verify", "passed": False, "error": result[2]}
    cell["figures"] = _figures(json.loads(parity.read_text()))
    if not result[0]:
        first = cell["figures"]["failures"][0] if cell["figures"]["failures"] else result[2]
        return {**cell, "stage": "verify", "passed": False, "error": first}
    if speed is None:
        cell["speed"] = {"skipped": "--no-speed"}
    else:
        cell["speed"], stage_seconds = measure_speed(model, lane, artifacts, models, work, env, speed)
        cell["seconds"].update(stage_seconds)
    return {**cell, "stage": "done", "passed": True, "error": None}


def _progress(model: str, lane: str, stage: str, result: tuple[bool, float, str]) -> None:
    ok, seconds, error = result
    state = "ok" if ok else f"FAILED: {error}"
    print(f"[{model} × {lane}] {stage} {state} ({seconds:.0f} s)", file=sys.stderr, flush=True)


def _failure_text(stage: str, error: str, limit: int = 200) -> str:
    error = headline(error).replace("|", "\\|")
    return f"✗ **{stage}**: {error[:limit]}{'…' if len(error) > limit else ''}"


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "not run"
    if not cell["passed"]:
        return _failure_text(cell["stage"], cell["error"])
    f = cell["figures"]
    return (
        f"✓ {f['savedmodel_vs_pytorch_max_abs']:.1e} abs, {f['savedmodel_vs_pytorch_max_rel']:.1e} rel, "
        f"top-1 {f['top1_agreement']:.0%}; pre {f['preprocessing_pixel_max_abs']:.3f}"
    )


def transposes(cell: dict | None) -> tuple[int, int] | None:
    """Transpose ops in the converter's graph before optimize.py's rewrites and after, when it got that far."""
    rewrite = (cell or {}).get("graph_rewrite")
    if not rewrite:
        return None
    return rewrite["ops_before"].get("Transpose", 0), rewrite["ops_after"].get("Transpose", 0)


def _onnx_rewrite_text(cell: dict) -> str:
    """What onnx_rewrite changed in the ONNX file before the converter read it, when it changed anything (a record
    from before the constant folding has no folded_tensors)."""
    rewrite = cell.get("onnx_rewrite") or {}
    parts = []
    if rewrite.get("folded_tensors"):
        folded = rewrite["folded_tensors"]
        parts.append(f"{len(folded)} constant tensor(s) folded, {rewrite['folded_nodes']} node(s) removed")
    if rewrite.get("range_scalar_bounds"):
        parts.append(f"{rewrite['range_scalar_bounds']} Range bound(s) made scalar ({', '.join(rewrite['nodes'])})")
    if rewrite.get("trailing_empty_inputs"):
        parts.append(f"{rewrite['trailing_empty_inputs']} trailing omitted input(s) dropped")
    return f"ONNX rewrite: {', '.join(parts)}; " if parts else ""


def _not_measured(cell: dict | None) -> str | None:
    """Why a cell has no speed figures, or None when it has them (or a failed speed stage)."""
    if cell is None:
        return "not run"
    if not cell["passed"]:
        return f"– ({cell['stage']} failed)"
    speed = cell.get("speed")
    if speed is None:
        return "not measured (run before the speed stages existed)"
    if "skipped" in speed:
        return f"not measured ({speed['skipped']})"
    return None


def _transposes_text(cell: dict | None) -> str:
    counted = transposes(cell)
    if counted is not None:
        return f"{counted[0]} → {counted[1]}"
    if cell is None:
        return "not run"
    if cell.get("stage") in ("export", "convert"):
        return f"– ({cell['stage']} failed)"
    return "not rewritten (--no-optimize)"


def _speed_text(cell: dict | None) -> str:
    why = _not_measured(cell)
    if why is not None:
        return why
    session, served = cell["speed"]["session"], cell["speed"]["served"]
    if "error" in session:
        parts = [_failure_text(session["stage"], session["error"], 120)]
    else:
        latency = session.get("batch1_latency_vs_onnxruntime")
        parts = [f"{session['throughput_vs_onnxruntime']:.2f}× / " + ("–" if latency is None else f"{latency:.2f}×")]
    if "error" in served:
        parts.append(_failure_text(served["stage"], served["error"], 120))
    else:
        parts.append(f"{served['images_per_second']:.1f} img/s")
    return "; ".join(parts)


def _speed_details(cell: dict) -> str:
    if _not_measured(cell) is not None:
        return _not_measured(cell)
    session, served = cell["speed"]["session"], cell["speed"]["served"]
    parts = []
    if "error" not in session:
        parts.append(
            f"Session batch {session['best_batch']} {session['images_per_second']:.1f} img/s vs ONNX Runtime batch "
            f"{session['onnxruntime_best_batch']} {session['onnxruntime_images_per_second']:.1f}"
        )
        if "batch1_latency_ms" in session:
            parts.append(
                f"batch 1 {session['batch1_latency_ms']:.1f} ms vs {session['onnxruntime_batch1_latency_ms']:.1f} ms"
            )
    if "error" not in served:
        batch = served.get("mean_processed_batch")
        of_best = (
            f" ({served['images_per_second'] / session['images_per_second']:.2f}× the Session's best)"
            if "error" not in session
            else ""
        )
        parts.append(
            f"served {served['images_per_second']:.1f} img/s at {served['callers']} callers{of_best}, p50 "
            f"{served['p50_ms']:.0f} ms" + (f", mean batch {batch:.1f}" if batch else "")
        )
        if served.get("discarded_stopped_measurements"):  # served_rate measured again after a SIGSTOP
            parts[-1] += f" ({served['discarded_stopped_measurements']} stopped measurement(s) discarded)"
    return "; ".join(parts) or "both speed stages failed"


def _lane_table(title: str, text, lanes: list[str], models: list[str], cells: dict) -> list[str]:
    lines = [f"| {title} | " + " | ".join(f"`{lane}`" for lane in lanes) + " |", "|---" * (len(lanes) + 1) + "|"]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(text(cells.get((model, lane))) for lane in lanes) + " |")
    return lines


def _speed_paragraph(settings: dict | None) -> str:
    how = (
        f"over {settings['rounds']} rounds at batch sizes {', '.join(map(str, settings['batch_sizes']))}"
        if settings
        else "over several rounds"
    )
    callers = settings["callers"] if settings else 16
    return (
        "Each passing cell: the Session path (the SavedModel's MetaGraph in a Session with docker/config's session "
        "config, as TF Serving runs it) against ONNX Runtime on the same ONNX file in the same process, interleaved "
        f"{how} (median round): best-batch throughput ÷ ONNX Runtime's best (above 1: faster), then batch-1 latency "
        "÷ ONNX Runtime's (below 1: faster); then the embedded server with docker/config's flags and batching, "
        f"{callers} concurrent gRPC Predict callers of one image each: images per second. Callers and server share "
        "the machine's cores. Absolute figures depend on the machine and on what else ran on it; each ratio compares "
        "figures taken in one process, minutes apart at most."
    )


def markdown(results: list[dict], lanes: list[str], models: list[str], cpu: str) -> str:
    cells = {(c["model"], c["lane"]): c for c in results}
    cpu = "; ".join(dict.fromkeys(c.get("cpu", cpu) for c in results)) or cpu  # kept cells may come from another
    settings = next((c["speed"]["settings"] for c in results if "settings" in c.get("speed", {})), None)
    lines = [
        "# Architectures × lanes: export → convert → verify → bench → serve (seeded weights)",
        "",
        f"CPU: {cpu}. Each cell: SavedModel vs PyTorch, the worst over batch sizes 1, 3 and 8 on the 16 reference",
        "inputs (max abs, max relative to the largest logit, top-1 agreement), then `predict_images`' largest pixel",
        "difference from torchvision's preprocessing of the 8 photos (normalized units; one grey level ≈ 0.017).",
        "A failed cell names the stage that failed and the error's line.",
        "",
        *_lane_table("model", _cell_text, lanes, models, cells),
        "",
        "## Speed",
        "",
        *textwrap.wrap(_speed_paragraph(settings), 110),
        "",
        *_lane_table("model", _speed_text, lanes, models, cells),
        "",
        "## Transposes left after optimize.py's rewrites",
        "",
        "Transpose ops in the converter's graph before the rewrites → after (the version's manifest, graph_rewrite).",
        "",
        *_lane_table("model", _transposes_text, lanes, models, cells),
    ]
    lines += ["", "## Per cell", "", "| model | lane | result | seconds (export, convert, verify, bench, serve) | "
              "details | speed |", "|---|---|---|---|---|---|"]  # fmt: skip
    for model in models:
        for lane in lanes:
            cell = cells.get((model, lane))
            if cell is None:
                continue
            seconds = ", ".join(f"{cell['seconds'].get(s, '–')}" for s in ("export", "convert", "verify", "bench",
                                                                           "serve"))  # fmt: skip
            f = cell.get("figures")
            counted = transposes(cell)
            rewrites = _onnx_rewrite_text(cell) + (f"transposes {counted[0]}→{counted[1]}; " if counted else "")
            details = rewrites + (
                f"float32 rounding {f['pytorch_float32_rounding']:.1e}; vs ONNX Runtime "
                f"{f['savedmodel_vs_onnxruntime_max_abs']:.1e}; {f['distinct_top1']} distinct top-1 of 16, min margin "
                f"{f['min_margin']:.4f}; preprocessing {f['preprocessing']}, photo top-1 {f['preprocessing_top1']:.0%}"
                if f
                else ""
            )
            result = "pass" if cell["passed"] else f"{cell['stage']} failed"
            lines.append(f"| {model} | {lane} | {result} | {seconds} | {details} | {_speed_details(cell)} |")
    return "\n".join(lines) + "\n"


_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"), (re.compile(r"\*\*(.+?)\*\*"), r"<b>\1</b>")]


def _inline(text: str) -> str:
    text = html.escape(text).replace("\\|", "|")
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return text


def page(markdown_text: str, chart: bytes | None, chart_note: str) -> str:
    """models.md as a self-contained HTML page (headings, paragraphs, tables), the chart under the first table."""
    parts, table, paragraph = [], [], []
    figure = (
        f"<figure><img alt='the matrix as a chart' src='data:image/png;base64,{base64.b64encode(chart).decode()}'>"
        f"<figcaption>{html.escape(chart_note)}</figcaption></figure>"
        if chart
        else f"<p class='note'>{html.escape(chart_note)}</p>"
    )

    def flush() -> None:
        nonlocal figure
        if paragraph:
            parts.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if table:
            rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in table]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows[2:])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()
            if figure:
                parts.append(figure)
                figure = ""

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            if paragraph:
                flush()
            table.append(line)
            continue
        if table or not line.strip():
            flush()
        if line.startswith("## "):
            parts.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            parts.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.strip():
            paragraph.append(line.strip())
    flush()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>pt2tf: architectures × lanes</title>"
        "<style>body{font-family:sans-serif;max-width:1500px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}img{max-width:100%}"
        ".note{color:#a00}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def chart(results_path: Path, python: str | None, work: Path, env: dict[str, str]) -> tuple[bytes | None, str]:
    """The matrix's chart as PNG bytes, drawn by pt2tf_convert.matrix_chart in `python`'s env (one with
    matplotlib), and its caption; (None, why) when it could not be drawn."""
    if python is None:
        return None, "No chart: no --chart-python (an env with matplotlib) was given."
    png = work / "models.png"
    ok, _, error = _run(python, ["-m", "pt2tf_convert.matrix_chart", str(results_path), str(png)], env, 300)
    if not ok:
        return None, f"No chart: pt2tf_convert.matrix_chart failed: {error}"
    caption = (
        "Per model and lane: parity (SavedModel vs PyTorch, max abs), the Session path's best-batch throughput and "
        "batch-1 latency as ratios to ONNX Runtime in the same process, and served gRPC throughput. ✗: the cell "
        "or that stage failed; –: not measured."
    )
    return png.read_bytes(), caption


def _previous(out: Path) -> list[dict]:
    path = out / "results.json"
    return json.loads(path.read_text())["cells"] if path.is_file() else []


def _position(names: list[str], name: str) -> int:
    return names.index(name) if name in names else len(names)


def write_reports(out: Path, results: list[dict], lanes: list[str], models: list[str], cpu: str, chart_python,
                  env: dict[str, str]) -> None:  # fmt: skip
    """results.json, <out>.md and <out>.html, each written to a temporary file and renamed into place. The cells are
    stored in the tables' order (model, then lane), which the chart takes its lanes' order and colours from."""
    results = sorted(results, key=lambda c: (_position(models, c["model"]), _position(lanes, c["lane"])))
    replace_file(out / "results.json", json.dumps({"cpu": cpu, "cells": results}, indent=2) + "\n")
    text = markdown(results, lanes, models, cpu)
    replace_file(out.with_suffix(".md"), text)
    with tempfile.TemporaryDirectory(prefix="pt2tf-models-chart-") as tmp:
        png, note = chart(out / "results.json", chart_python, Path(tmp), env)
    replace_file(out.with_suffix(".html"), page(text, png, note))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-model-matrix", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json; the table is <out>.md")
    parser.add_argument("--lane", type=LaneSpec.parse, action="append", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--cpu", default="not named", help="the CPU the figures come from, for the table")
    parser.add_argument(
        "--no-speed", dest="speed", action="store_false", help="parity only: skip the bench and serve stages"
    )
    parser.add_argument("--platform-config", help="the TF Serving platform config whose session config bench uses")
    parser.add_argument("--chart-python", help="the interpreter of an env with matplotlib, to draw the HTML's chart")
    args = parser.parse_args(argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    speed = Speed(platform_config=args.platform_config) if args.speed else None
    lane_names = [lane.name for lane in args.lane]
    previous = _previous(args.out)
    taken = {(model, lane) for model in args.models for lane in lane_names}
    results = [cell for cell in previous if (cell["model"], cell["lane"]) not in taken]
    order = list(dict.fromkeys([cell["model"] for cell in results] + args.models))
    # The tables keep every lane the previous run had: one lane run again for one model leaves the others' cells.
    lanes = list(dict.fromkeys([cell["lane"] for cell in previous] + lane_names))
    for model in args.models:
        work = Path(tempfile.mkdtemp(prefix=f"pt2tf-models-{model}-"))
        try:
            exports: dict = {}
            for lane in args.lane:
                results.append({**run_cell(model, lane, work, exports, env, speed), "cpu": args.cpu})
        finally:
            shutil.rmtree(work, ignore_errors=True)  # ~100 MB per model and lane
        # Written after every model: a long run shows its table so far, and an interrupted one keeps it.
        write_reports(args.out, results, lanes, order, args.cpu, args.chart_python, env)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
