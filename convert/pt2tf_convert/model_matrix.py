"""Architectures × lanes: export → convert → verify each torchvision classifier on every lane, one cell each.

    python -m pt2tf_convert.model_matrix --out reports/models \\
        --lane onnx2tf:dynamo:18:onnx2tf:<export env python>:<lane env python> ... \\
        --models resnet18 mobilenet_v3_small ...

Standard library only: it runs in the tools env (nox -s models) and runs each stage as its own process in
the stage's locked env, as the stage sessions do. A lane's export is shared by the lanes with the same
exporter and opset. Each cell is the parity figures of verify, or the stage that failed and the error's
line. Writes <out>/results.json and <out>.md (reports/models.md), each to a temporary file renamed into place;
the cells of models a run does not take are kept from the previous results.json, so a few can be run again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STAGE_TIMEOUT_S = 1800
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


@dataclass(frozen=True)
class LaneSpec:
    name: str
    exporter: str
    opset: int
    converter: str
    export_python: str
    python: str  # the lane's env: convert and verify

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


def _run(python: str, args: list[str], env: dict[str, str]) -> tuple[bool, float, str]:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [python, *args], capture_output=True, text=True, env=env, timeout=STAGE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started, f"timed out after {STAGE_TIMEOUT_S} s"
    seconds = time.monotonic() - started
    return done.returncode == 0, seconds, "" if done.returncode == 0 else error_line(done.stderr)


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


def run_cell(model: str, lane: LaneSpec, work: Path, exports: dict, env: dict[str, str]) -> dict:
    """Export (shared per exporter and opset), convert and verify `model` on `lane`."""
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
    return {**cell, "stage": "done", "passed": True, "error": None}


def _progress(model: str, lane: str, stage: str, result: tuple[bool, float, str]) -> None:
    ok, seconds, error = result
    state = "ok" if ok else f"FAILED: {error}"
    print(f"[{model} × {lane}] {stage} {state} ({seconds:.0f} s)", file=sys.stderr, flush=True)


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "not run"
    if not cell["passed"]:
        where = cell["stage"]
        error = headline(cell["error"]).replace("|", "\\|")
        return f"✗ **{where}**: {error[:200]}{'…' if len(error) > 200 else ''}"
    f = cell["figures"]
    return (
        f"✓ {f['savedmodel_vs_pytorch_max_abs']:.1e} abs, {f['savedmodel_vs_pytorch_max_rel']:.1e} rel, "
        f"top-1 {f['top1_agreement']:.0%}; pre {f['preprocessing_pixel_max_abs']:.3f}"
    )


def markdown(results: list[dict], lanes: list[str], models: list[str], cpu: str) -> str:
    cells = {(c["model"], c["lane"]): c for c in results}
    cpu = "; ".join(dict.fromkeys(c.get("cpu", cpu) for c in results)) or cpu  # kept cells may come from another
    lines = [
        "# Architectures × lanes: export → convert → verify (seeded weights)",
        "",
        f"CPU: {cpu}. Each cell: SavedModel vs PyTorch, the worst over batch sizes 1, 3 and 8 on the 16 reference",
        "inputs (max abs, max relative to the largest logit, top-1 agreement), then `predict_images`' largest pixel",
        "difference from torchvision's preprocessing of the 8 photos (normalized units; one grey level ≈ 0.017).",
        "A failed cell names the stage that failed and the error's line.",
        "",
        "| model | " + " | ".join(f"`{lane}`" for lane in lanes) + " |",
        "|---" * (len(lanes) + 1) + "|",
    ]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(_cell_text(cells.get((model, lane))) for lane in lanes) + " |")
    lines += ["", "## Per cell", "", "| model | lane | result | seconds (export, convert, verify) | details |"]
    lines.append("|---|---|---|---|---|")
    for model in models:
        for lane in lanes:
            cell = cells.get((model, lane))
            if cell is None:
                continue
            seconds = ", ".join(f"{cell['seconds'].get(s, '–')}" for s in ("export", "convert", "verify"))
            f = cell.get("figures")
            rewrite = cell.get("graph_rewrite") or {}
            transposes = (
                f"transposes {rewrite['ops_before'].get('Transpose', 0)}→{rewrite['ops_after'].get('Transpose', 0)}; "
                if rewrite
                else ""
            )
            details = transposes + (
                f"float32 rounding {f['pytorch_float32_rounding']:.1e}; vs ONNX Runtime "
                f"{f['savedmodel_vs_onnxruntime_max_abs']:.1e}; {f['distinct_top1']} distinct top-1 of 16, min margin "
                f"{f['min_margin']:.4f}; preprocessing {f['preprocessing']}, photo top-1 {f['preprocessing_top1']:.0%}"
                if f
                else ""
            )
            result = "pass" if cell["passed"] else f"{cell['stage']} failed"
            lines.append(f"| {model} | {lane} | {result} | {seconds} | {details} |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _previous(out: Path) -> list[dict]:
    path = out / "results.json"
    return json.loads(path.read_text())["cells"] if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-model-matrix", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json; the table is <out>.md")
    parser.add_argument("--lane", type=LaneSpec.parse, action="append", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--cpu", default="not named", help="the CPU the figures come from, for the table")
    args = parser.parse_args(argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    lane_names = [lane.name for lane in args.lane]
    results = [cell for cell in _previous(args.out) if cell["model"] not in args.models]
    order = list(dict.fromkeys([cell["model"] for cell in results] + args.models))
    for model in args.models:
        work = Path(tempfile.mkdtemp(prefix=f"pt2tf-models-{model}-"))
        try:
            exports: dict = {}
            for lane in args.lane:
                results.append({**run_cell(model, lane, work, exports, env), "cpu": args.cpu})
        finally:
            shutil.rmtree(work, ignore_errors=True)  # ~100 MB per model and lane
        # Written after every model: a long run shows its table so far, and an interrupted one keeps it.
        _write_atomic(args.out / "results.json", json.dumps({"cpu": args.cpu, "cells": results}, indent=2) + "\n")
        _write_atomic(args.out.with_suffix(".md"), markdown(results, lane_names, order, args.cpu))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
