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
# Convolutions listed one by one at most; beyond it, those that cost the last column most over ONNX Runtime.
CONV_ROWS = 24


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


def matched_convolutions(reference: list[dict], other: list[dict]) -> tuple[list[float | None], list[str]]:
    """`other`'s ms per convolution of `reference`, matched by layer in order; and `other`'s unmatched layers.

    The n-th convolution of a layer in one runtime is the n-th of that layer in the other: convolutions of the
    same layer follow one another through the network, so their order is the same in both.
    """
    queues: dict[str, list[float]] = {}
    for conv in other:
        queues.setdefault(conv["layer"], []).append(conv["ms"])
    matched = [queues[c["layer"]].pop(0) if queues.get(c["layer"]) else None for c in reference]
    return matched, [layer for layer, left in queues.items() for _ in left]


def conv_table(records: list[dict], batch: str) -> str | None:
    """The convolutions one by one, ONNX Runtime's (the first record's) beside each TensorFlow's; None without."""
    present = [r for r in records if r["batches"].get(batch, {}).get("convolutions")]
    if len(present) < 2:
        return None
    reference = present[0]["batches"][batch]["convolutions"]
    columns, unmatched = [], []
    for record in present[1:]:
        matched, left = matched_convolutions(reference, record["batches"][batch]["convolutions"])
        columns.append(matched)
        if left:
            unmatched.append(f"- {record['runtime']}: {len(left)} not in {present[0]['runtime']}: {', '.join(left)}")
    rows = list(range(len(reference)))
    if len(rows) > CONV_ROWS:  # the rows that explain most of the last column's excess, in network order
        excess = {i: (columns[-1][i] or 0.0) - reference[i]["ms"] for i in rows}
        rows = sorted(sorted(rows, key=lambda i: -excess[i])[:CONV_ROWS])
    names = [r["runtime"] for r in present]
    lines = [
        f"### batch {batch}: convolutions one by one, ms per call (÷ {names[0]})",
        "",
        f"Matched by layer (kernel, input channels per group → output channels, output size), in {names[0]}'s order.",
        "",
        "| # | layer | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]

    def row(label: str, indices: list[int], bold: bool = False) -> str:
        base = sum(reference[i]["ms"] for i in indices)
        cells = [f"{base:.3f}"]
        for column in columns:
            values = [column[i] for i in indices]
            ms = None if None in values else sum(values)
            cells.append("–" if ms is None else f"{ms:.3f} ({ms / base:.2f}×)" if base > 0 else f"{ms:.3f}")
        return f"| {label} | " + " | ".join(f"**{c}**" if bold else c for c in cells) + " |"

    for i in rows:
        lines.append(row(f"{i + 1} | {reference[i]['layer']}", [i]))
    others = sorted(set(range(len(reference))) - set(rows))
    if others:
        lines.append(row(f" | the other {len(others)}, together", others))
    lines.append(row(f" | all {len(reference)}", list(range(len(reference))), bold=True))
    if unmatched:
        lines += ["", "Convolutions with no counterpart (a layer the other runtime does not have):", "", *unmatched]
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
            *[t for batch in batches if (t := conv_table(records, batch))],
        ]
    )
    (root / "profile.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
