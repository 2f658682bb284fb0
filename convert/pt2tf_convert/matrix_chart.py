"""The models × lanes matrix as one chart: `python -m pt2tf_convert.matrix_chart reports/models/results.json out.png`.

Runs in an env with matplotlib (any lane's); pt2tf_convert.model_matrix, which is standard library only, calls it
and embeds the PNG in reports/models.html. Four panels, a group of bars per model, a bar per lane: parity (SavedModel
vs PyTorch, max abs, log scale, with 4× the model's own float32 rounding marked), the Session path's best-batch
throughput ÷ ONNX Runtime, its batch-1 latency ÷ ONNX Runtime (both measured in the same process), and the served
gRPC throughput. A cell without the figure is marked at the foot of its slot: ✗ failed, – not measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

ROUNDING_FACTOR = 4  # pt2tf_convert.metrics.ROUNDING_FACTOR; this module reads results, not the metrics module


def _parity(cell: dict) -> float | None:
    return cell["figures"]["savedmodel_vs_pytorch_max_abs"] if cell.get("figures") else None


def _session(key: str):
    def get(cell: dict) -> float | None:
        session = (cell.get("speed") or {}).get("session") or {}
        return session.get(key)

    return get


def _served(cell: dict) -> float | None:
    return ((cell.get("speed") or {}).get("served") or {}).get("images_per_second")


def _missing_mark(cell: dict | None) -> str:
    """✗ when the cell or the stage that makes the figure failed, – when it was not measured."""
    if cell is None:
        return "–"
    if not cell.get("passed", False):
        return "✗"
    speed = cell.get("speed") or {}
    return "✗" if any("error" in (speed.get(part) or {}) for part in ("session", "served")) else "–"


PANELS = [
    ("SavedModel vs PyTorch, max abs (log scale)", _parity, None),
    ("Session best-batch img/s ÷ ONNX Runtime (higher: faster; log scale)", _session("throughput_vs_onnxruntime"), 1.0),
    (
        "Session batch-1 latency ÷ ONNX Runtime (lower: faster; log scale)",
        _session("batch1_latency_vs_onnxruntime"),
        1.0,
    ),
    ("served gRPC img/s, 16 callers", _served, None),
]


def draw(results: dict, out: Path) -> None:
    cells = {(c["model"], c["lane"]): c for c in results["cells"]}
    models = list(dict.fromkeys(c["model"] for c in results["cells"]))
    lanes = list(dict.fromkeys(c["lane"] for c in results["cells"]))
    width = 0.8 / max(1, len(lanes))
    figure, axes = plt.subplots(2, 2, figsize=(max(12, 1.3 * len(models) * 2), 9), squeeze=False)
    for ax, (title, get, reference) in zip(axes.flat, PANELS, strict=True):
        for index, lane in enumerate(lanes):
            xs = [m + (index - (len(lanes) - 1) / 2) * width for m in range(len(models))]
            values = [get(cells[(model, lane)]) if (model, lane) in cells else None for model in models]
            color = f"C{index}"
            ax.bar([x for x, v in zip(xs, values, strict=True) if v is not None],
                   [v for v in values if v is not None], width, label=lane, color=color)  # fmt: skip
            for x, value, model in zip(xs, values, models, strict=True):
                if value is None:
                    ax.annotate(_missing_mark(cells.get((model, lane))), (x, 0), xytext=(0, 2), color=color,
                                textcoords="offset points", xycoords=("data", "axes fraction"), ha="center",
                                va="bottom", fontsize=11)  # fmt: skip
        drawn = [get(c) for c in cells.values() if get(c)]
        if get is _parity:
            for m, model in enumerate(models):
                rounding = next((cells[(model, lane)]["figures"].get("pytorch_float32_rounding") for lane in lanes
                                 if cells.get((model, lane), {}).get("figures")), None)  # fmt: skip
                if rounding:
                    drawn.append(ROUNDING_FACTOR * rounding)
                    ax.hlines(ROUNDING_FACTOR * rounding, m - 0.45, m + 0.45, colors="crimson", linestyles="--",
                              label=f"{ROUNDING_FACTOR}× the model's float32 rounding" if m == 0 else None)  # fmt: skip
        if reference is not None:  # a ratio: on a log scale 2× faster and 2× slower are as far from 1
            drawn.append(reference)
            ax.axhline(reference, color="grey", linestyle=":", linewidth=1)
        if get is _parity or reference is not None:
            ax.set_yscale("log")
            if drawn:
                ax.set_ylim(min(drawn) / 1.5, max(drawn) * 1.5)
        if reference is not None:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_yticks(
                [t for t in (0.1, 0.25, 0.5, 1, 2, 4, 10, 25, 50, 100) if min(drawn) / 1.5 <= t <= max(drawn) * 1.5]
            )
        ax.set_xlim(-0.5, len(models) - 0.5)  # a model without any bar keeps its slot and its marks
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=9)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    cpu = "; ".join(dict.fromkeys(c.get("cpu", results.get("cpu", "")) for c in results["cells"]))
    figure.suptitle(f"Architectures × lanes — {cpu}", fontsize=10)
    figure.tight_layout()
    figure.savefig(out, format="png", dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("error: usage: python -m pt2tf_convert.matrix_chart RESULTS_JSON OUT_PNG", file=sys.stderr)
        return 2
    results_path, out = Path(argv[0]), Path(argv[1])
    if not results_path.is_file():
        print(f"error: {results_path} does not exist: run nox -s models first", file=sys.stderr)
        return 1
    results = json.loads(results_path.read_text())
    if not results.get("cells"):
        print(f"error: {results_path} holds no cells: nothing to draw", file=sys.stderr)
        return 1
    draw(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
