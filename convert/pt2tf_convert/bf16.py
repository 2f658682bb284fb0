"""The bf16 variant: the same SavedModel, served with oneDNN's bf16 auto mixed precision.

bf16 is a Session rewrite (`graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16:
ON`, TF Serving's `mixed_precision: "bfloat16"`), not a different graph, and TF Serving applies a
session config to every model of a server. So the variant is its own model name
(`<model>-bf16`) in the repository, meant for a server started with
docker/config/platform-bf16.config, and its manifest says so. Its parity has its own thresholds,
since bf16 keeps 8 bits of mantissa where fp32 keeps 24:

    python -m pt2tf_convert.bf16 --lane onnx2tf --artifacts artifacts/onnx2tf --models models/onnx2tf \
        --model-name resnet18-bf16 --reports reports/onnx2tf-bf16

checks a published bf16 version the way verify checks an fp32 one (PyTorch, ONNX Runtime and the
SavedModel through a bf16 Session, batch sizes 1, 3 and 8, on the export's reference data) and
writes parity-bf16.{json,md}. Both convert --bf16 and this check refuse a CPU without native bf16.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .artifacts import load_reference
from .metrics import compare
from .runtimes import chunks, onnxruntime_session, run_onnxruntime

BATCH_SIZES = (1, 3, 8)
SUFFIX = "-bf16"
PLATFORM_CONFIG = "/config/platform-bf16.config"  # docker/config/ as compose mounts it


@dataclass(frozen=True)
class Bf16Thresholds:
    """Bounds for bf16 logits against fp32 ones (PyTorch's, ONNX Runtime's).

    Measured on an AMD EPYC with avx512_bf16 (no AMX), lane onnx2tf, 16 reference inputs. Seeded
    weights whose answers collapse to 4 classes: max relative error 0.0068, min cosine 0.99993,
    top-1 agreement 100%, top-5 set agreement 81%. Seeded weights calibrated so answers vary (15
    classes, top-1 margins down to 0.002): max relative error 0.025 (max abs 0.10 on logits up to
    4.1), min cosine 0.99974, top-1 agreement 87.5% (the two inputs whose top-1 margin, 0.002 and
    0.015, is below bf16's error), top-5 set agreement 94%. Bounds: twice the larger error, cosine
    0.999, at most one top-1 change in four and half the top-5 sets. A top-1 whose margin exceeds
    twice the allowed error cannot flip without breaking max_rel, so the error bound is what keeps
    clear answers; the agreement bounds only limit how many near ties may flip.
    """

    max_rel: float = 0.05
    min_cosine: float = 0.999
    min_top1: float = 0.75
    min_top5: float = 0.5


class Bf16Error(RuntimeError):
    """bf16 cannot run or does not meet its thresholds here; the message says why."""


def require_bf16_cpu() -> None:
    """Refuse, with the reason, on a CPU without avx512_bf16 or amx_bf16."""
    from pt2tf_serve.cpu import bf16_refusal

    refusal = bf16_refusal()
    if refusal:
        raise Bf16Error(refusal)


def session_config():
    """The ConfigProto of platform-bf16.config's sessions: oneDNN's bf16 auto mixed precision on."""
    import tensorflow as tf
    from pt2tf_serve.config import apply_mixed_precision

    config = tf.compat.v1.ConfigProto()
    apply_mixed_precision(config, "bfloat16", "the bf16 variant")
    return config


def session_logits(servable, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """serving_default's logits from a pt2tf_serve Servable, fed `batch_size` inputs per call."""
    signature = servable.signatures["serving_default"]
    run = servable.run
    return np.concatenate([run(signature, {"input": c}, ("output",))["output"] for c in chunks(inputs, batch_size)])


def failures(metrics: dict, limits: Bf16Thresholds, where: str) -> list[str]:
    """Every bf16 threshold `metrics` (from metrics.compare) breaks, one line each."""
    found = []
    if metrics["max_rel"] > limits.max_rel:
        found.append(f"{where}: relative error {metrics['max_rel']:.2e} > {limits.max_rel:.0e}")
    if metrics["min_cosine"] < limits.min_cosine:
        found.append(f"{where}: cosine similarity {metrics['min_cosine']:.5f} < {limits.min_cosine}")
    if metrics["top1_agreement"] < limits.min_top1:
        found.append(f"{where}: top-1 agreement {metrics['top1_agreement']:.0%} < {limits.min_top1:.0%}")
    if metrics["top5_set_agreement"] < limits.min_top5:
        found.append(f"{where}: top-5 set agreement {metrics['top5_set_agreement']:.0%} < {limits.min_top5:.0%}")
    return found


def parity(saved_model: Path, onnx_path: Path, ref: dict[str, np.ndarray]) -> dict[str, dict[str, dict]]:
    """batch size → pair → metrics: a bf16 Session, as TF Serving runs the variant, vs PyTorch and ONNX Runtime."""
    from pt2tf_serve.servable import Servable

    session = onnxruntime_session(onnx_path)
    servable = Servable("bf16-check", 0, saved_model, session_config(), ["serve"])
    results = {}
    try:
        for batch_size in BATCH_SIZES:
            bf16 = session_logits(servable, ref["inputs"], batch_size)
            ort = run_onnxruntime(session, ref["inputs"], batch_size)
            results[str(batch_size)] = {
                "pytorch_vs_savedmodel_bf16": compare(ref["logits"], bf16),
                "onnxruntime_vs_savedmodel_bf16": compare(ort, bf16),
            }
    finally:
        servable.close()
    return results


def check(saved_model: Path, onnx_path: Path, ref: dict[str, np.ndarray], limits: Bf16Thresholds) -> tuple[dict, list]:
    """(parity per batch size, failed thresholds) of a bf16 variant."""
    require_bf16_cpu()
    results = parity(saved_model, onnx_path, ref)
    failed = [
        line
        for batch, pairs in results.items()
        for pair, metrics in pairs.items()
        for line in failures(metrics, limits, f"batch {batch}, {pair.replace('_vs_', ' vs ')}")
    ]
    return results, failed


def _markdown(report: dict) -> str:
    limits = report["thresholds"]
    lines = [
        f"# bf16 parity — lane `{report['lane']}`, {report['model']} version {report['version']}",
        "",
        f"Verdict: **{'FAIL' if report['failures'] else 'PASS'}** (relative ≤ {limits['max_rel']}, cosine ≥ "
        f"{limits['min_cosine']}, top-1 ≥ {limits['min_top1']:.0%}, top-5 set ≥ {limits['min_top5']:.0%}); "
        f"SavedModel run in a Session with auto_mixed_precision_onednn_bfloat16 ON, on {report['cpu']}.",
        "",
        "| batch | pair | max abs | mean abs | max rel | min cosine | top-1 | top-5 set |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch, pairs in report["parity"].items():
        for pair, m in pairs.items():
            lines.append(
                f"| {batch} | {pair.replace('_vs_', ' vs ')} | {m['max_abs']:.2e} | {m['mean_abs']:.2e} | "
                f"{m['max_rel']:.2e} | {m['min_cosine']:.6f} | {m['top1_agreement']:.0%} | "
                f"{m['top5_set_agreement']:.0%} |"
            )
    if report["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from pt2tf_serve.cpu import cpu_info

    from .repository import read_manifest, resolve_version

    parser = argparse.ArgumentParser(
        prog="pt2tf-verify-bf16", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lane", required=True)
    parser.add_argument("--artifacts", required=True, type=Path)
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--model-name", default="resnet18" + SUFFIX)
    parser.add_argument("--version", type=int)
    parser.add_argument("--reports", required=True, type=Path)
    args = parser.parse_args(argv)
    saved_model = resolve_version(args.models / args.model_name, args.version)
    manifest = read_manifest(saved_model)
    if manifest.get("precision") != "bfloat16":
        print(f"error: {saved_model} is not a bf16 variant (its manifest says precision "
              f"{manifest.get('precision', 'float32')}); publish one with convert --bf16", file=sys.stderr)  # fmt: skip
        return 1
    limits = Bf16Thresholds(**manifest["thresholds"])
    try:
        results, failed = check(saved_model, args.artifacts / "model.onnx", load_reference(args.artifacts), limits)
    except Bf16Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {
        "lane": args.lane,
        "model": args.model_name,
        "version": int(saved_model.name),
        "cpu": cpu_info().describe(),
        "thresholds": asdict(limits),
        "parity": results,
        "failures": failed,
        "passed": not failed,
    }
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / "parity-bf16.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.reports / "parity-bf16.md").write_text(_markdown(report))
    print(f"report: {args.reports / 'parity-bf16.md'}", file=sys.stderr)
    if failed:
        print(f"bf16 verify FAILED for {saved_model}:\n  - " + "\n  - ".join(failed), file=sys.stderr)
        return 1
    print(f"bf16 verify passed for {saved_model}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
