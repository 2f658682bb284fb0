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


def _process_ratios(machine: dict, results: list[dict], path: str) -> tuple[dict, float, float | None] | None:
    """A TensorFlow process's `serving_default` on `path` against the ONNX Runtime of the same process (`ratios`);
    None for a record that is not such a process."""
    if "onednn_on" not in machine:
        return None
    ort = {r["batch"]: r for r in results if _is_ort(r) and "same process" in r["runtime"]}
    mine = {r["batch"]: r for r in results if r["signature"] == "serving_default" and r.get("path") == path}
    return ratios(mine, ort) if ort and mine else None


def onednn_table(runs: list[tuple[str, dict, list[dict]]], path: str) -> str:
    """Per TensorFlow process: its oneDNN state and contraction kernel, and its ratios to the ONNX Runtime beside it."""
    lines = [
        "| run | lever | oneDNN | contractions (MatMul, Eigen's convolutions) | best batch ÷ ORT"
        " | batch-1 latency ÷ ORT |",
        "|---|---|---|---|---|---|",
    ]
    for stem, m, results in runs:
        measured = _process_ratios(m, results, path)
        if measured is None:
            continue
        best, throughput, latency = measured
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


def lever_plan(levers: str | None, repeats: str | None, known: tuple[str, ...]) -> list[tuple[str, str]]:
    """(file stem, lever) per process of `nox -s bench-levers`: LEVERS (names, space- or comma-separated; default:
    all of `known`) run REPEATS times (default 1), alternating lever by lever so that a drift of a shared machine
    falls on every lever alike. A stem keeps the lever's index in `known`: the report lists the levers in order."""
    chosen = (levers or "").replace(",", " ").split() or list(known)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"LEVERS: unknown lever {', '.join(unknown)}; the levers are: {', '.join(known)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"LEVERS: {' '.join(chosen)} names a lever twice; REPEATS=N runs each N times")
    try:
        count = int(repeats or "1")
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"REPEATS: {repeats!r} is not a positive whole number (processes per lever)")
    width = len(str(count))  # -01 … -10 keep the report's name order the order they ran in
    return [
        (f"{known.index(name)}-{name}" + (f"-{n + 1:0{width}d}" if count > 1 else ""), name)
        for n in range(count)
        for name in chosen
    ]


def _lever_ratios(runs: list[tuple[str, dict, list[dict]]], path: str) -> dict[str, list[tuple[float, float | None]]]:
    """Per lever, (best batch ÷ ORT, batch-1 latency ÷ ORT) of each of its processes, ORT of the same process."""
    per_lever: dict[str, list[tuple[float, float | None]]] = {}
    for _, m, results in runs:
        measured = _process_ratios(m, results, path)
        if measured is not None:
            per_lever.setdefault(m.get("variant", "default"), []).append(measured[1:])
    return per_lever


def _span(values: list[float]) -> str:
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return f"{low}×" if low == high else f"{low}–{high}×"


def _versus(mine: list[float], theirs: list[float], higher_is_better: bool) -> str:
    """'better' / 'worse' only when the ranges of processes do not overlap; else 'within the spread'."""
    if min(mine) > max(theirs):
        return "better" if higher_is_better else "worse"
    if max(mine) < min(theirs):
        return "worse" if higher_is_better else "better"
    return "within the spread"


def spread_table(runs: list[tuple[str, dict, list[dict]]], path: str, baseline: str = "default") -> str:
    """Each lever's range over its processes beside the baseline's, and which lever, if any, beats the baseline
    beyond the spread: higher best-batch throughput with batch-1 latency no worse, or better latency with
    throughput no lower. Needs two processes of the baseline and of a lever (REPEATS=2 or more) to decide."""
    per_lever = _lever_ratios(runs, path)
    if not any(len(v) > 1 for v in per_lever.values()):
        return ""
    lines = [
        f"| lever | processes | best batch ÷ ORT | batch-1 latency ÷ ORT | throughput vs `{baseline}` |"
        f" latency vs `{baseline}` |",
        "|---|---|---|---|---|---|",
    ]
    base = per_lever.get(baseline, [])
    base_best = [b for b, _ in base]
    base_latency = [lat for _, lat in base if lat is not None]
    winners = []
    for lever, values in per_lever.items():
        best = [b for b, _ in values]
        latency = [lat for _, lat in values if lat is not None]
        cells = [f"`{lever}`", str(len(values)), _span(best), _span(latency) if latency else "–"]
        if lever == baseline or len(base) < 2 or len(values) < 2:
            cells += ["–", "–"]
        else:
            throughput = _versus(best, base_best, higher_is_better=True)
            # Latency decides only with batch 1 in two processes or more on both sides; unknown is not "no worse".
            known_latency = len(latency) > 1 and len(base_latency) > 1
            delay = _versus(latency, base_latency, higher_is_better=False) if known_latency else "–"
            cells += [throughput, delay]
            no_worse = ("better", "within the spread")
            if (throughput == "better" and delay in no_worse) or (delay == "better" and throughput in no_worse):
                winners.append(lever)
        lines.append("| " + " | ".join(cells) + " |")
    if not base:
        verdict = f"Decides nothing: `{baseline}` did not run; add it to LEVERS."
    elif len(base) < 2:
        verdict = f"Decides nothing: `{baseline}` needs two processes or more (REPEATS=2) to have a spread."
    elif winners:
        verdict = f"Beats `{baseline}` beyond the spread of processes: {', '.join(f'`{w}`' for w in winners)}."
    else:
        verdict = f"No lever beats `{baseline}` beyond the spread of processes: keep `{baseline}`."
    return "\n".join(lines) + "\n\n" + verdict


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
    spread = spread_table(runs, SESSION_PATH)
    if spread:
        text += f"\nEach lever over its processes (ratios to the ONNX Runtime of each process):\n\n{spread}\n"
    replace_file(root.parent / f"{root.name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
