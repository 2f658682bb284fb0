"""Put one bench run's measurements side by side: `python -m pt2tf_convert.bench_table reports/bench`.

Standard library only. Each SavedModel process also ran ONNX Runtime on the same ONNX file,
interleaved with it; its ratios are to that ONNX Runtime (same process, same minutes), other
rows' to the ONNX Runtime run of the export env. The targets (best-batch throughput ≥ 0.95×,
batch-1 latency ≤ 1.3×) are reported, not asserted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .atomic import replace_file

THROUGHPUT_TARGET = 0.95
SESSION_PATH = "Session (as TF Serving)"  # pt2tf_convert.bench.SESSION; this module imports nothing of the project
LATENCY_TARGET = 1.3


def _is_ort(r: dict) -> bool:
    return r["runtime"].startswith("ONNX Runtime")


def load(root: Path) -> list[tuple[str, dict, list[dict]]]:
    """(file stem, machine record, results) of every JSON file of a bench run, in name order."""
    runs = []
    for path in sorted(root.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, list):  # a record without machine information
            data = {"machine": {}, "results": data}
        runs.append((path.stem, data["machine"], data["results"]))
    return runs


def _cell(r: dict | None, ort: dict | None) -> str:
    if r is None:
        return "–"
    ratio = f" ({r['images_per_second'] / ort['images_per_second']:.2f}×)" if ort else ""
    return f"{r['images_per_second']:.1f}{ratio}, {r['latency_ms_median']:.1f}"


def ratios(by_batch: dict[int, dict], ort: dict[int, dict]) -> tuple[dict, float, float | None]:
    """The best batch, its throughput ÷ ONNX Runtime's best, and batch-1 latency ÷ ONNX Runtime's (None: no batch 1)."""
    best = max(by_batch.values(), key=lambda r: r["images_per_second"])
    best_ort = max(ort.values(), key=lambda r: r["images_per_second"])
    throughput = best["images_per_second"] / best_ort["images_per_second"]
    latency = by_batch[1]["latency_ms_median"] / ort[1]["latency_ms_median"] if 1 in by_batch and 1 in ort else None
    return best, throughput, latency


def onednn_table(runs: list[tuple[str, dict, list[dict]]], path: str) -> str:
    """Per TensorFlow process: its oneDNN state and contraction kernel, and its ratios to the ONNX Runtime beside it."""
    lines = [
        "| run | lever | oneDNN | contractions (MatMul, Eigen's convolutions) | best batch ÷ ORT"
        " | batch-1 latency ÷ ORT |",
        "|---|---|---|---|---|---|",
    ]
    for stem, m, results in runs:
        if "onednn_on" not in m:
            continue
        ort = {r["batch"]: r for r in results if _is_ort(r) and "same process" in r["runtime"]}
        mine = {r["batch"]: r for r in results if r["signature"] == "serving_default" and r.get("path") == path}
        if not ort or not mine:
            continue
        best, throughput, latency = ratios(mine, ort)
        onednn = "on" if m["onednn_on"] else "off"
        cells = [
            stem,
            m.get("variant", "default"),
            onednn,
            m["contraction"],
            f"{throughput:.2f}× (batch {best['batch']})",
        ]
        cells.append("–" if latency is None else f"{latency:.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def table(runs: list[tuple[str, dict, list[dict]]]) -> str:
    everything = [r for _, _, results in runs for r in results]
    global_ort = {r["batch"]: r for _, _, results in runs for r in results if r["runtime"].startswith("ONNX") and
                  "same process" not in r["runtime"]}  # fmt: skip
    if not global_ort and not any(_is_ort(r) for r in everything):
        raise SystemExit("error: the bench run has no ONNX Runtime measurement to compare against")
    batches = sorted({r["batch"] for r in everything})
    header = "| runtime | signature | path | " + " | ".join(f"batch {b}: img/s (× ORT), median ms" for b in batches)
    lines = [header + " |", "|---|---|---|" + "---|" * len(batches)]
    verdicts = []
    for _, _, results in runs:
        local_ort = {r["batch"]: r for r in results if _is_ort(r) and "same process" in r["runtime"]}
        yardstick = local_ort or global_ort
        rows: dict[tuple, dict] = {}
        for r in results:
            rows.setdefault((r["runtime"], r["signature"], r.get("path", "-")), {})[r["batch"]] = r
        for (runtime, signature, path), by_batch in rows.items():
            ort = yardstick if not (_is_ort(by_batch[min(by_batch)]) and not local_ort) else global_ort
            cells = [_cell(by_batch.get(b), ort.get(b)) for b in batches]
            lines.append(f"| {runtime} | {signature} | {path} | " + " | ".join(cells) + " |")
            if signature != "serving_default" or not yardstick:
                continue
            best, throughput, latency = ratios(by_batch, yardstick)
            verdict = (
                f"- {runtime}, {path}: best-batch throughput {throughput:.2f}× ONNX Runtime's (batch {best['batch']}; "
                f"target ≥ {THROUGHPUT_TARGET}× — {'met' if throughput >= THROUGHPUT_TARGET else 'not met'})"
            )
            if latency is not None:
                met = "met" if latency <= LATENCY_TARGET else "not met"
                verdict += f"; batch-1 latency {latency:.2f}× (target ≤ {LATENCY_TARGET}× — {met})"
            verdicts.append(verdict)
    return "\n".join(lines) + "\n\nTargets, serving_default against ONNX Runtime:\n\n" + "\n".join(verdicts)


def machine_notes(runs: list[tuple[str, dict, list[dict]]]) -> str:
    cpus = sorted({m["cpu"] for _, m, _ in runs if m.get("cpu")})
    lines = [f"CPU: {cpu}" for cpu in cpus] or ["CPU: not recorded"]
    for stem, m, _ in runs:
        if m.get("threads"):
            threads = ", ".join(f"{k} {v}" for k, v in m["threads"].items() if v is not None)
            lines.append(f"- `{stem}`: {threads}" + (f"; {m['onednn']}" if m.get("onednn") else ""))
        for path, why in m.get("not_measured", {}).items():
            lines.append(f"- `{stem}`: {path} not measured: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:] or ["reports/bench"])[0])
    runs = load(root)
    if not any(results for _, _, results in runs):
        print(f"error: no measurements in {root}/ — run `nox -s bench`", file=sys.stderr)
        return 1
    text = (
        "# Bench: ResNet18 on this machine's CPU, one run\n\n"
        + machine_notes(runs)
        + "\n\nThe machine may be shared with other work: compare ratios within this run, not figures across runs."
        " Each SavedModel process interleaves its configurations with ONNX Runtime over several rounds and"
        " reports the median round; its ratios are to that ONNX Runtime.\n\n" + table(runs) + "\n"
    )
    onednn = onednn_table(runs, SESSION_PATH)
    if onednn:
        text += f"\noneDNN in each TensorFlow process, `serving_default` on the {SESSION_PATH} path:\n\n{onednn}\n"
    replace_file(root.parent / f"{root.name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
