"""Side-by-side per-layer table of a profile run: `python -m pt2tf_convert.profile_table reports/profile`.

Standard library only. Reads the JSON files pt2tf_convert.profile wrote (ONNX Runtime first, then
each SavedModel in name order) and writes reports/profile/profile.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ("conv", "pad", "transpose", "bias/activation", "pooling", "matmul", "other")
TOP_OPS = 8


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(records: list[dict], batch: str) -> str:
    present = [r for r in records if batch in r["batches"]]
    names = [r["runtime"] for r in present]
    lines = [
        f"### batch {batch}: ms per call",
        "",
        "| category | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    rows = [*ORDER, "framework overhead", "wall time per call (untraced)"]
    for row in rows:
        cells = []
        for record in present:
            summary = record["batches"][batch]
            if row == "framework overhead":
                cells.append(_ms(summary["framework_overhead_ms"]))
            elif row == "wall time per call (untraced)":
                cells.append(f"**{_ms(summary['wall_ms'])}**")
            else:
                cells.append(_ms(summary["categories_ms"].get(row)))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Kernels taking the most time (ms per call, count per call):", ""]
    for record in present:
        summary = record["batches"][batch]
        top = sorted(summary["ops_ms"].items(), key=lambda kv: -kv[1])[:TOP_OPS]
        ops = ", ".join(f"{op} {ms:.2f} ({summary['ops_count'].get(op, 0)}×)" for op, ms in top)
        lines.append(f"- {record['runtime']}: {ops}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:] or ["reports/profile"])[0])
    paths = sorted(root.glob("*.json"), key=lambda p: (not p.name.startswith("onnxruntime"), p.name))
    records = [json.loads(p.read_text()) for p in paths]
    if not records:
        print(f"error: no profiles in {root}/ — run `nox -s profile`", file=sys.stderr)
        return 1
    batches = sorted({b for r in records for b in r["batches"]}, key=int)
    cpus = sorted({r["cpu"] for r in records})
    text = "\n\n".join(
        [
            "# Profile: where one call's time goes, per layer category",
            "\n".join(
                [
                    *(f"CPU: {cpu}" for cpu in cpus),
                    *(f"- {r['runtime']}: {r['onednn']}" for r in records if r.get("onednn")),
                ]
            ),
            "TensorFlow: a Session on the MetaGraph (as TF Serving), step stats from RunOptions FULL_TRACE; "
            "ONNX Runtime: its node profiler, same ONNX file. Kernel times are medians over traced calls; "
            "with two inter-op threads TensorFlow's categories can add up to more than the wall time. "
            "Framework overhead = untraced wall time − time any kernel ran (gaps between ops, call entry and "
            "exit). The machine may be shared: compare columns, not runs.",
            *[table(records, batch) for batch in batches],
        ]
    )
    (root / "profile.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
