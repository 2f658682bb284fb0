"""Verify a published SavedModel against PyTorch and ONNX Runtime; write the parity report.

    python -m pt2tf_convert.verify --lane onnx2tf --artifacts artifacts/onnx2tf \
        --models models/onnx2tf --reports reports/onnx2tf [--model resnet18]

Compares, on the export's reference inputs and at batch sizes 1, 3 and 8: PyTorch (the
stored reference) vs ONNX Runtime vs the SavedModel's serving_default. Checks the
predict_images signature's in-graph preprocessing against torchvision's (as the model's weights
specify it), the signatures
against the contract, and the warmup file. Exits non-zero, saying which, when a threshold fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import ArtifactsError, check_exported_model, load_reference, photo_bytes, read_export
from .metrics import MIN_DISTINCT_TOP1, ROUNDING_FACTOR, compare, discrimination, distinct_top1_needed
from .preprocessing import IMAGENET_STD, PREPROCESS_MAX_ABS, PREPROCESS_MEAN_ABS, Preprocessing, exported_model
from .progress import step
from .repository import read_manifest, resolve_version
from .runtimes import onnxruntime_session, run_onnxruntime, run_serving

BATCH_SIZES = (1, 3, 8)
PAIRS = (("pytorch", "onnxruntime"), ("pytorch", "savedmodel"), ("onnxruntime", "savedmodel"))


@dataclass(frozen=True)
class Thresholds:
    max_abs: float = 1e-4
    max_rel: float = 1e-5
    min_top1: float = 1.0
    # In-graph decode/resize/crop vs torchvision's PIL pipeline on the bundled photos (see preprocessing.py), and
    # no top-1 change: seeded weights' margins are calibrated to outlast a difference at these bounds.
    preprocess_mean_abs: float = PREPROCESS_MEAN_ABS
    preprocess_max_abs: float = PREPROCESS_MAX_ABS
    preprocess_min_top1: float = 1.0
    # Seeded weights must answer the reference inputs with this many distinct top-1 classes,
    # or agreement on them proves little; with a user's weights a smaller count is a warning.
    min_distinct_top1: int = MIN_DISTINCT_TOP1


def run_parity(
    onnx_path: Path, loaded: Any, ref: dict[str, np.ndarray]
) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Metrics per batch size and pair; the largest batch size's outputs and absolute errors (for the plot)."""
    session = onnxruntime_session(onnx_path)
    results = {}
    for batch_size in BATCH_SIZES:
        outputs = {
            "pytorch": ref["logits"],
            "onnxruntime": run_onnxruntime(session, ref["inputs"], batch_size),
            "savedmodel": run_serving(loaded, ref["inputs"], batch_size),
        }
        results[batch_size] = {f"{a}_vs_{b}": compare(outputs[a], outputs[b]) for a, b in PAIRS}
    errors = {
        "SavedModel vs PyTorch": np.abs(outputs["savedmodel"] - outputs["pytorch"]),
        "ONNX Runtime vs PyTorch": np.abs(outputs["onnxruntime"] - outputs["pytorch"]),
    }
    return results, outputs, errors


def run_preprocessing(loaded: Any, ref: dict[str, np.ndarray], spec: Preprocessing) -> dict:
    import tensorflow as tf

    from .signatures import preprocess_image

    photos = photo_bytes(ref)
    is_photo = ref["kinds"] == "photo"
    torch_inputs, torch_logits = ref["inputs"][is_photo], ref["logits"][is_photo]
    graph_inputs = np.stack([preprocess_image(tf.constant(p), spec).numpy() for p in photos])
    pixel_diff = np.abs(graph_inputs - torch_inputs)
    predict = loaded.signatures["predict_images"]
    out = predict(image_bytes=tf.constant(photos))
    shifted = torch_logits - torch_logits.max(axis=1, keepdims=True)
    torch_probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    probs = compare(torch_probs, out["probabilities"].numpy())
    labels = ref["labels"]
    per_photo = [
        {
            "photo": str(name),
            "pixel_mean_abs": float(pixel_diff[i].mean()),
            "pixel_max_abs": float(pixel_diff[i].max()),
            "torchvision_top1": str(labels[torch_logits[i].argmax()]),
            "graph_top1": out["labels"].numpy()[i][0].decode(),
        }
        for i, name in enumerate(ref["photo_names"])
    ]
    return {
        "spec": spec.to_json(),
        "pixel_mean_abs": float(pixel_diff.mean()),
        "pixel_max_abs": float(pixel_diff.max()),
        "probabilities": probs,
        "per_photo": per_photo,
    }


def reference_answers(ref: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict:
    """Each reference input's top-1 class and margin (PyTorch) beside the SavedModel's top-1."""
    found = discrimination(ref["logits"])
    labels = ref["labels"]
    saved = outputs["savedmodel"].argmax(axis=1)
    found["per_input"] = [
        {
            "input": str(name),
            "kind": str(kind),
            "class": top1,
            "label": str(labels[top1]),
            "margin": margin,
            "savedmodel_class": int(got),
        }
        for name, kind, top1, margin, got in zip(
            ref["names"], ref["kinds"], found["top1"], found["margins"], saved, strict=True
        )
    ]
    return found


def weights_record(export: dict) -> dict:
    """Which weights the version was made from, as the conversion's manifest says."""
    seeded = export["weights"] == "seeded"
    description = export.get("weights_description") or (
        "seeded weights: labels are not ImageNet predictions" if seeded else f"{export['weights']} (hash not recorded)"
    )
    return {"source": export["weights"], "sha256": export.get("weights_sha256"), "seeded": seeded,
            "description": description}  # fmt: skip


def check_warmup(saved_model: Path) -> dict:
    from .warmup import WARMUP_FILE, read_warmup

    logs = read_warmup(saved_model / "assets.extra" / WARMUP_FILE)
    signatures = sorted({log.predict_log.request.model_spec.signature_name for log in logs})
    return {"records": len(logs), "signatures": signatures}


def rounding_limits(limits: Thresholds, rounding: float, largest_logit: float) -> dict:
    """The parity bounds for this model: `limits`, or ROUNDING_FACTOR × PyTorch's own float32 rounding where larger.

    A deep model (MobileNetV3-Small: 5e-5) rounds more than ResNet18 (4e-6, whose bounds stay the limits)."""
    floor = ROUNDING_FACTOR * rounding
    return {
        "pytorch_float32_rounding": rounding,
        "max_abs": max(limits.max_abs, floor),
        "max_rel": max(limits.max_rel, floor / largest_logit),
    }


def failures(report: dict, limits: Thresholds) -> list[str]:
    """Every threshold the report breaks, as one readable line each."""
    found = []
    bounds = report.get("parity_bounds") or {"max_abs": limits.max_abs, "max_rel": limits.max_rel}
    for batch_size, pairs in report["parity"].items():
        for pair, metrics in pairs.items():
            where = f"batch {batch_size}, {pair.replace('_vs_', ' vs ')}"
            if metrics["max_abs"] > bounds["max_abs"]:
                found.append(f"{where}: max abs error {metrics['max_abs']:.2e} > {bounds['max_abs']:.1e}")
            if metrics["max_rel"] > bounds["max_rel"]:
                found.append(f"{where}: relative error {metrics['max_rel']:.2e} > {bounds['max_rel']:.1e}")
            if metrics["top1_agreement"] < limits.min_top1:
                found.append(f"{where}: top-1 agreement {metrics['top1_agreement']:.0%} < {limits.min_top1:.0%}")
    pre = report["preprocessing"]
    if pre["pixel_mean_abs"] > limits.preprocess_mean_abs:
        found.append(
            f"predict_images preprocessing: mean abs pixel difference {pre['pixel_mean_abs']:.3f} "
            f"> {limits.preprocess_mean_abs} (normalized units)"
        )
    if pre["pixel_max_abs"] > limits.preprocess_max_abs:
        found.append(
            f"predict_images preprocessing: a pixel differs from torchvision's by {pre['pixel_max_abs']:.3f} "
            f"> {limits.preprocess_max_abs:.3f} (two grey levels)"
        )
    if pre["probabilities"]["top1_agreement"] < limits.preprocess_min_top1:
        found.append(
            f"predict_images preprocessing: top-1 agreement with torchvision "
            f"{pre['probabilities']['top1_agreement']:.0%} < {limits.preprocess_min_top1:.0%}"
        )
    answers = report["answers"]
    if report["weights"]["seeded"] and answers["distinct_top1"] < limits.min_distinct_top1:
        found.append(
            undiscriminating(answers, limits) + "; export again to calibrate the seeded classifier (nox -s export)"
        )
    found += [f"signature contract: {problem}" for problem in report["contract_problems"]]
    if set(report["warmup"]["signatures"]) != {"predict_images", "serving_default"}:
        found.append(f"warmup file covers {report['warmup']['signatures']}, not both signatures")
    return found


def undiscriminating(answers: dict, limits: Thresholds) -> str:
    return (
        f"the reference answers cannot discriminate: {answers['distinct_top1']} distinct top-1 classes among "
        f"{answers['inputs']} inputs (< {limits.min_distinct_top1}), so agreement on them proves little"
    )


def warnings_for(report: dict, limits: Thresholds) -> list[str]:
    """What the report shows that is not a failure but should be read."""
    answers = report["answers"]
    if not report["weights"]["seeded"] and answers["distinct_top1"] < limits.min_distinct_top1:
        return [undiscriminating(answers, limits) + " (a user's weights may map random tensors to few classes)"]
    return []


def _plot(path: Path, errors: dict[str, np.ndarray], title: str, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    floor = 1e-12
    values = [np.maximum(e.ravel(), floor) for e in errors.values()]
    bins = np.logspace(-12, max(-3, np.log10(max(v.max() for v in values)) + 0.5), 60)
    for (label, _), v in zip(errors.items(), values, strict=True):
        ax.hist(v, bins=bins, alpha=0.6, label=label)
    ax.axvline(threshold, color="crimson", linestyle="--", label=f"threshold {threshold:.0e}")
    ax.set_xscale("log")
    ax.set_xlabel("|logit − PyTorch logit| (values below 1e-12 shown at 1e-12)")
    inputs, classes = next(iter(errors.values())).shape
    ax.set_ylabel(f"count ({inputs} inputs × {classes} logits)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _dims(shape: list) -> str:
    """[None, 224, 224, 3] as 'batch, 224, 224, 3'."""
    return ", ".join("batch" if d is None else str(d) for d in shape)


def _rewrite_lines(report: dict) -> list[str]:
    """The ONNX and graph rewrites the version's conversion applied, and what the seeded calibration reached."""
    onnx_rewrite, graph = report["rewrites"]["onnx"], report["rewrites"]["graph"]
    lines = []
    if onnx_rewrite is not None:
        count = onnx_rewrite["range_scalar_bounds"]
        nodes = f" ({', '.join(onnx_rewrite['nodes'])})" if count else ""
        lines.append(f"- ONNX, before the converter: {count} Range bound(s) made scalar{nodes}.")
        folded = onnx_rewrite.get("folded_tensors", [])  # absent from versions converted before folding
        if folded:
            lines.append(
                f"- ONNX, before the converter: {len(folded)} tensor(s) computed from constants and fixed sizes alone "
                f"made initializers, {onnx_rewrite['folded_nodes']} node(s) removed ({', '.join(folded)})."
            )
        if onnx_rewrite.get("trailing_empty_inputs"):  # onnx-tf only; absent from versions converted before it
            lines.append(
                f"- ONNX, before the converter: {onnx_rewrite['trailing_empty_inputs']} omitted optional input(s) "
                "('') dropped from the end of their nodes' inputs."
            )
    if graph is not None:
        before, after = graph["ops_before"].get("Transpose", 0), graph["ops_after"].get("Transpose", 0)
        lines.append(
            f"- TensorFlow graph, after it: {before} → {after} Transpose ops ({graph['transpose_pairs_cancelled']} "
            f"inverse pairs cancelled), {graph['pads_folded']} Pad folded into Conv2D, "
            f"{graph.get('max_pool_pads_folded', 0)} into MaxPool, {graph['bias_adds']} Add → BiasAdd"
            + (f", input pinned to [{_dims(graph['input_shape'])}]." if graph.get("input_shape") else ".")
        )
    calibration = report.get("calibration") or {}
    if "grey_level_margin_ratio" in calibration:
        lines.append(
            f"- Seeded classifier: own classes raised by {calibration['margin_boost']} logit std; every reference "
            f"margin is ≥ {calibration['grey_level_margin_ratio']}× what {calibration['grey_level_share']:.0%} of "
            "colour values one grey level off take from it."
        )
    return lines or ["Not recorded by this version's conversion."]


def _markdown(report: dict, failed: list[str]) -> str:
    lines = [
        f"# Parity report — lane `{report['lane']}`, {report['model']} version {report['version']}"
        f" ({report['architecture']})",
        "",
        f"Verdict: **{'FAIL' if failed else 'PASS'}**"
        f" (max abs ≤ {report['parity_bounds']['max_abs']:.1e}, relative ≤ {report['parity_bounds']['max_rel']:.1e},"
        f" top-1 ≥ {report['thresholds']['min_top1']:.0%}; PyTorch's own float32 rounding of this model, float32 vs"
        f" float64: {report['parity_bounds']['pytorch_float32_rounding']:.1e})",
        "",
        f"Weights: {report['weights']['description']}.",
        "",
        "| batch | pair | max abs | mean abs | max rel | min cosine | top-1 | top-5 set |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch_size, pairs in report["parity"].items():
        for pair, m in pairs.items():
            lines.append(
                f"| {batch_size} | {pair.replace('_vs_', ' vs ')} | {m['max_abs']:.2e} | {m['mean_abs']:.2e} | "
                f"{m['max_rel']:.2e} | {m['min_cosine']:.8f} | {m['top1_agreement']:.0%} | "
                f"{m['top5_set_agreement']:.0%} |"
            )
    answers = report["answers"]
    lines += [
        "",
        "## Reference answers (what agreement was measured on)",
        "",
        f"{answers['distinct_top1']} distinct top-1 classes among {answers['inputs']} inputs "
        f"(seeded weights must give ≥ {report['thresholds']['min_distinct_top1']}); smallest top-1 margin "
        f"{answers['min_margin']:.4f} (top-1 minus top-2 logit). Margin is what a numeric difference must "
        "exceed to change an answer.",
        "",
        "| input | kind | PyTorch top-1 | margin | SavedModel top-1 |",
        "|---|---|---|---|---|",
    ]
    for row in answers["per_input"]:
        same = "same" if row["savedmodel_class"] == row["class"] else f"**{row['savedmodel_class']}**"
        lines.append(
            f"| {row['input']} | {row['kind']} | {row['class']} {row['label']} | {row['margin']:.4f} | {same} |"
        )
    pre = report["preprocessing"]
    lines += [
        "",
        "## Preprocessing parity (`predict_images` vs torchvision on the bundled photos)",
        "",
        f"As the weights specify: {Preprocessing.from_json(pre['spec']).describe()}.",
        "",
        f"Pixel difference after decode/resize/crop/normalize: mean {pre['pixel_mean_abs']:.4f}, "
        f"max {pre['pixel_max_abs']:.3f} (normalized units; 1/255/0.226 ≈ 0.017 is one grey level). "
        f"Probabilities: max abs {pre['probabilities']['max_abs']:.2e}, "
        f"top-1 agreement {pre['probabilities']['top1_agreement']:.0%}, "
        f"top-5 set agreement {pre['probabilities']['top5_set_agreement']:.0%}.",
        "",
        "| photo | pixel mean abs | pixel max abs | torchvision top-1 | graph top-1 |",
        "|---|---|---|---|---|",
    ]
    for p in pre["per_photo"]:
        lines.append(
            f"| {p['photo']} | {p['pixel_mean_abs']:.4f} | {p['pixel_max_abs']:.3f} | "
            f"{p['torchvision_top1']} | {p['graph_top1']} |"
        )
    lines += ["", "## Rewrites", "", *_rewrite_lines(report)]
    lines += ["", "## Signatures", ""]
    lines += [f"- ✗ {p}" for p in report["contract_problems"]] or ["Exactly the contract (see saved_model_cli.txt)."]
    lines += ["", f"Warmup: {report['warmup']['records']} records for {', '.join(report['warmup']['signatures'])}."]
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if failed:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failed]
    lines += ["", "![error histogram](parity_errors.png)", ""]
    return "\n".join(lines)


def verify(
    lane: str,
    artifacts: Path,
    models: Path,
    model_name: str | None,
    reports: Path,
    version: int | None,
    limits: Thresholds,
) -> dict:
    """Run every check, write reports/<lane>/parity.{json,md} + plot; return the report (its `failures`).

    `model_name` is the served name, by default the exported model's (export.json)."""
    import tensorflow as tf

    from .signatures import contract_problems

    export = read_export(artifacts)
    architecture, _ = exported_model(export)
    model_name = model_name or architecture
    saved_model = resolve_version(models / model_name, version)
    print(f"verify lane '{lane}': {saved_model}", file=sys.stderr)
    ref = load_reference(artifacts)
    loaded = tf.saved_model.load(str(saved_model))
    reports.mkdir(parents=True, exist_ok=True)
    with step(f"PyTorch vs ONNX Runtime vs SavedModel at batch sizes {BATCH_SIZES}"):
        parity, outputs, errors = run_parity(artifacts / "model.onnx", loaded, ref)
    manifest = read_manifest(saved_model)
    version_architecture, spec = exported_model(manifest["export"])  # what the version's graph was built with
    if version_architecture != architecture:
        raise ArtifactsError(
            f"{saved_model} was converted from an export of {version_architecture}, and {artifacts} holds "
            f"{architecture}'s: verify against the export it came from, or convert this one"
        )
    with step(f"predict_images preprocessing vs torchvision ({spec.describe()})"):
        preprocessing = run_preprocessing(loaded, ref, spec)
    with step("signatures and warmup records"):
        problems = contract_problems(loaded, len(ref["labels"]))
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "saved_model_cli"), "show", "--dir", str(saved_model), "--all"],
            capture_output=True,
            text=True,
        )
        (reports / "saved_model_cli.txt").write_text(cli.stdout + cli.stderr)
        warmup = check_warmup(saved_model)
    report = {
        "lane": lane,
        "model": model_name,
        "architecture": architecture,
        "version": int(saved_model.name),
        "saved_model": str(saved_model),
        "versions": manifest["versions"],
        "export": manifest["export"],
        "weights": weights_record(manifest["export"]),
        "answers": reference_answers(ref, outputs),
        "thresholds": asdict(limits),
        "parity_bounds": rounding_limits(
            limits, export.get("pytorch_float32_rounding", 0.0), float(np.abs(ref["logits"]).max())
        ),
        "parity": {str(k): v for k, v in parity.items()},
        "preprocessing": preprocessing,
        "contract_problems": problems,
        "warmup": warmup,
        # What the conversion rewrote: ONNX patterns before the converter, the TF graph after it (None: not
        # recorded by the version's convert, or --no-optimize).
        "rewrites": {"onnx": manifest.get("onnx_rewrite"), "graph": manifest.get("graph_rewrite")},
        "calibration": export.get("classifier_calibration"),
    }
    # A user's model with few classes cannot give MIN_DISTINCT_TOP1 distinct answers: half its classes will do. Grey
    # levels are bounded in normalized units: a spec with a smaller std than ImageNet's makes one level larger.
    grey = min(IMAGENET_STD) / min(spec.std)
    limits = replace(
        limits,
        min_distinct_top1=min(limits.min_distinct_top1, distinct_top1_needed(len(ref["labels"]))),
        preprocess_max_abs=limits.preprocess_max_abs * max(1.0, grey),
        preprocess_mean_abs=limits.preprocess_mean_abs * max(1.0, grey),
    )
    report["thresholds"] = asdict(limits)
    failed = failures(report, limits)
    report["warnings"] = warnings_for(report, limits)
    report["failures"] = failed
    report["passed"] = not failed
    (reports / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(
        reports / "parity_errors.png",
        errors,
        f"lane {lane}: absolute logit error at batch {BATCH_SIZES[-1]}",
        limits.max_abs,
    )
    (reports / "parity.md").write_text(_markdown(report, failed))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lane", required=True)
    parser.add_argument("--artifacts", required=True, type=Path)
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument(
        "--model", help="the model the export must hold (default: whichever it holds, named in its export.json)"
    )
    parser.add_argument("--model-name", help="the served model's name (default: the exported model's, e.g. resnet18)")
    parser.add_argument("--version", type=int, help="version to verify (default: the newest)")
    parser.add_argument("--reports", required=True, type=Path)
    defaults = Thresholds()
    parser.add_argument("--max-abs", type=float, default=defaults.max_abs)
    parser.add_argument("--max-rel", type=float, default=defaults.max_rel)
    parser.add_argument("--min-top1", type=float, default=defaults.min_top1)
    parser.add_argument("--preprocess-mean-abs", type=float, default=defaults.preprocess_mean_abs)
    parser.add_argument("--preprocess-max-abs", type=float, default=defaults.preprocess_max_abs)
    parser.add_argument("--preprocess-min-top1", type=float, default=defaults.preprocess_min_top1)
    parser.add_argument("--min-distinct-top1", type=int, default=defaults.min_distinct_top1)
    args = parser.parse_args(argv)
    limits = Thresholds(
        args.max_abs,
        args.max_rel,
        args.min_top1,
        args.preprocess_mean_abs,
        args.preprocess_max_abs,
        args.preprocess_min_top1,
        args.min_distinct_top1,
    )
    try:
        check_exported_model(args.artifacts, args.model)
        report = verify(args.lane, args.artifacts, args.models, args.model_name, args.reports, args.version, limits)
    except ArtifactsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = report["failures"]
    print(f"report: {args.reports / 'parity.md'}", file=sys.stderr)
    print(f"weights: {report['weights']['description']}", file=sys.stderr)
    for line in report["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    if failed:
        print(f"verify FAILED for lane '{args.lane}':", file=sys.stderr)
        for line in failed:
            print(f"  - {line}", file=sys.stderr)
        return 1
    print(f"verify passed for lane '{args.lane}'", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
