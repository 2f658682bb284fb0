"""Put one bench run's measurements side by side: `python -m pt2tf_convert.bench_table reports/bench`.

Standard library only. Ratios are to ONNX Runtime measured in the same run; the targets
(best-batch throughput ≥ 0.9×, batch-1 latency ≤ 1.3×) are reported, not asserted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

THROUGHPUT_TARGET = 0.9
LATENCY_TARGET = 1.3


def _key(r: dict) -> tuple[str, str]:
    return r["runtime"], r["signature"]


def table(results: list[dict]) -> str:
    ort = {r["batch"]: r for r in results if r["runtime"].startswith("ONNX Runtime")}
    if not ort:
        raise SystemExit("error: the bench run has no ONNX Runtime measurement to compare against")
    batches = sorted({r["batch"] for r in results})
    rows = {}
    # ONNX Runtime (the yardstick) and PyTorch first, then the SavedModels in the order measured.
    for r in sorted(results, key=lambda r: (not r["runtime"].startswith("ONNX"), not r["runtime"].startswith("PyT"))):
        rows.setdefault(_key(r), {})[r["batch"]] = r
    header = "| runtime | signature | " + " | ".join(f"batch {b}: img/s (× ORT), median ms" for b in batches) + " |"
    lines = [header, "|---|---|" + "---|" * len(batches)]
    verdicts = []
    for (runtime, signature), by_batch in rows.items():
        cells = []
        for b in batches:
            r = by_batch.get(b)
            if r is None:
                cells.append("–")
                continue
            ratio = r["images_per_second"] / ort[b]["images_per_second"]
            cells.append(f"{r['images_per_second']:.1f} ({ratio:.2f}×), {r['latency_ms_median']:.1f}")
        lines.append(f"| {runtime} | {signature} | " + " | ".join(cells) + " |")
        if signature == "serving_default":
            best = max(by_batch.values(), key=lambda r: r["images_per_second"])
            best_ort = max(ort.values(), key=lambda r: r["images_per_second"])
            throughput = best["images_per_second"] / best_ort["images_per_second"]
            latency = by_batch[1]["latency_ms_median"] / ort[1]["latency_ms_median"] if 1 in by_batch else None
            verdicts.append(
                f"- {runtime}: best-batch throughput {throughput:.2f}× ONNX Runtime's (batch {best['batch']}; "
                f"target ≥ {THROUGHPUT_TARGET}× — {'met' if throughput >= THROUGHPUT_TARGET else 'not met'})"
                + (
                    f"; batch-1 latency {latency:.2f}× (target ≤ {LATENCY_TARGET}× — "
                    f"{'met' if latency <= LATENCY_TARGET else 'not met'})"
                    if latency is not None
                    else ""
                )
            )
    return (
        "\n".join(lines)
        + "\n\nTargets, serving_default against ONNX Runtime in the same run:\n\n"
        + "\n".join(verdicts)
    )


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:] or ["reports/bench"])[0])
    results = [r for path in sorted(root.glob("*.json")) for r in json.loads(path.read_text())]
    if not results:
        print(f"error: no measurements in {root}/ — run `nox -s bench`", file=sys.stderr)
        return 1
    text = "# Bench: ResNet18 fp32 on this machine's CPU, one run\n\n" + table(results) + "\n"
    (root.parent / f"{root.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
