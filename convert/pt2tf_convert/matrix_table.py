"""Every lane's parity report side by side: `python -m pt2tf_convert.matrix_table reports/`.

Standard library only, so it runs in the tools env after each lane's verify wrote its JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pt2tf_toolchain.matrix import load_matrix

ROWS = [
    ("TensorFlow", lambda r: r["versions"].get("tensorflow", "?")),
    ("converter", lambda r: next(f"{k} {v}" for k, v in r["versions"].items() if k in ("onnx-tf", "onnx2tf"))),
    ("export", lambda r: f"{r['export']['exporter']}, opset {r['export']['opset']}, IR {r['export']['ir_version']}"),
    ("model version", lambda r: str(r["version"])),
    ("weights", lambda r: r.get("weights", {}).get("description", r["export"]["weights"])),
    (
        "reference answers",
        lambda r: (
            f"{r['answers']['distinct_top1']} distinct top-1 of {r['answers']['inputs']}, "
            f"min margin {r['answers']['min_margin']:.4f}"
            if "answers" in r
            else "not recorded (verify again)"
        ),
    ),
]
PAIRS = ["pytorch_vs_onnxruntime", "pytorch_vs_savedmodel", "onnxruntime_vs_savedmodel"]


def _worst(report: dict, pair: str, metric: str, pick=max) -> float:
    return pick(report["parity"][batch][pair][metric] for batch in report["parity"])


def table(reports: dict[str, dict]) -> str:
    lanes = list(reports)
    lines = ["| | " + " | ".join(f"`{lane}`" for lane in lanes) + " |", "|---" * (len(lanes) + 1) + "|"]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for label, get in ROWS:
        row(label, [get(reports[lane]) for lane in lanes])
    for pair in PAIRS:
        name = pair.replace("_vs_", " vs ")
        row(f"{name}: max abs", [f"{_worst(reports[lane], pair, 'max_abs'):.2e}" for lane in lanes])
        row(f"{name}: top-1", [f"{_worst(reports[lane], pair, 'top1_agreement', min):.0%}" for lane in lanes])
    row("preprocessing: pixel mean abs", [f"{reports[lane]['preprocessing']['pixel_mean_abs']:.4f}" for lane in lanes])
    row(
        "preprocessing: top-1 vs torchvision",
        [f"{reports[lane]['preprocessing']['probabilities']['top1_agreement']:.0%}" for lane in lanes],
    )
    row("signatures", ["exact" if not reports[lane]["contract_problems"] else "✗" for lane in lanes])
    row("verdict", ["**PASS**" if reports[lane]["passed"] else "**FAIL**" for lane in lanes])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:] or ["reports"])[0])
    reports = {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/parity.json")}
    order = [lane for lane in load_matrix().lanes if lane in reports]  # the matrix's order
    found = {lane: reports[lane] for lane in order + sorted(reports.keys() - set(order))}
    if not found:
        print(f"error: no {root}/<lane>/parity.json yet — run `make matrix` (or nox -s verify-<lane>)", file=sys.stderr)
        return 1
    text = "# Parity across lanes (worst over batch sizes 1, 3, 8)\n\n" + table(found) + "\n"
    (root / "matrix.md").write_text(text)
    print(text)
    return 0 if all(r["passed"] for r in found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
