"""Convert a lane's ONNX export into a TF Serving model version with the project's signatures.

    python -m pt2tf_convert.convert --lane onnx2tf --converter onnx2tf --artifacts artifacts/onnx2tf \
        --models models/onnx2tf [--model resnet18]

Reads artifacts/<lane>/{model.onnx,reference.npz,export.json} (written by export), and
publishes <models>/<model-name>/<version>/ (the model name defaults to the exported model's,
e.g. resnet18 or mobilenet_v3_small) in one rename: the wrapped SavedModel, its
warmup records (assets.extra/tf_serving_warmup_requests) and a manifest
(assets.extra/pt2tf_manifest.json). A conversion that fails or is interrupted leaves no
version directory behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .artifacts import (
    ArtifactsError,
    check_exported_model,
    load_reference,
    photo_bytes,
    read_export,
    sha256,
    weights_description,
)
from .backends import ConversionError, load_backend
from .bf16 import PLATFORM_CONFIG as BF16_PLATFORM_CONFIG
from .bf16 import SUFFIX as BF16_SUFFIX
from .bf16 import Bf16Error, Bf16Thresholds, require_bf16_cpu
from .bf16 import check as check_bf16
from .metrics import ROUNDING_FACTOR, compare
from .preprocessing import exported_model
from .progress import step
from .repository import MANIFEST_FILE, RepositoryError, staged_version
from .runtimes import onnxruntime_session, run_onnxruntime, run_serving
from .support import check_supported

# Conversion fidelity (TF vs ONNX Runtime on the same file): a converter bug, not a model change.
CONVERSION_ATOL = 1e-4
# What the version's manifest repeats from the export's: how the ONNX file was made, from which weights.
EXPORT_FIELDS = ("exporter", "opset", "ir_version", "weights", "seed", "weights_sha256")
USER_MODEL_FIELDS = ("factory", "num_classes", "labels_source")


def convert(
    lane: str,
    converter: str,
    artifacts: Path,
    models: Path,
    model_name: str | None = None,
    version: int | None = None,
    optimize_graph: bool = True,
    bf16: bool = False,
) -> Path:
    """Convert, optimize, wrap, check and publish; return the published version directory.

    `model_name` is the served name, by default the exported model's (export.json).
    With `bf16`, the version is published under `<model_name>-bf16` for a server whose sessions
    run oneDNN's bf16 auto mixed precision, after its bf16 parity met its own thresholds.
    """
    import onnx
    import onnxruntime
    import tensorflow as tf
    from pt2tf_serve.cpu import cpu_info

    from .onnx_rewrite import prepare
    from .optimize import optimize
    from .signatures import contract_problems, save_serving_model
    from .warmup import write_warmup

    export_manifest = read_export(artifacts)
    architecture, preprocessing = exported_model(export_manifest)
    model_name = model_name or architecture
    if bf16:
        require_bf16_cpu()  # before minutes of work: bf16 parity can only be measured where it runs
        model_name = model_name if model_name.endswith(BF16_SUFFIX) else model_name + BF16_SUFFIX
    backend = load_backend(converter)
    onnx_path = artifacts / "model.onnx"
    print(f"convert for lane '{lane}' with {backend.describe()} → {models / model_name}", file=sys.stderr)
    started = time.monotonic()
    with step("checking the ONNX file against what this lane's converter takes"):
        onnx_model = check_supported(onnx_path, lane, backend)
    ref = load_reference(artifacts)
    weights = weights_description(export_manifest)  # the answers will say it
    onnx_sha256 = sha256(onnx_path)
    with tempfile.TemporaryDirectory(prefix="pt2tf-convert-") as work:
        work = Path(work)
        with step("rewriting ONNX patterns the converters mistranslate (onnx_rewrite), where present"):
            prepared, onnx_rewrite = prepare(onnx_model, backend.NAME)
        print(f"  onnx: {onnx_rewrite.summary()}", file=sys.stderr)
        source_path = onnx_path
        if onnx_rewrite.changed:
            source_path = work / "model-prepared.onnx"
            onnx.save(prepared, str(source_path))
        with step(f"converting with {backend.NAME}"):
            converted = backend.convert(prepared, source_path, work)
        rewrite = None
        if optimize_graph:
            with step("freezing the weights and removing the converter's layout transposes"):
                converted, rewrite = optimize(converted)
            print(f"  graph: {rewrite.summary()}", file=sys.stderr)
        with staged_version(models / model_name, version) as (staging, number):
            with step(f"wrapping behind serving_default + predict_images (version {number})"):
                save_serving_model(converted, [str(x) for x in ref["labels"]], weights, staging, preprocessing)
            with step("checking the signatures against the contract"):
                loaded = tf.saved_model.load(str(staging))
                problems = contract_problems(loaded, len(ref["labels"]))
                if problems:
                    raise ConversionError("the SavedModel breaks the serving contract:\n  " + "\n  ".join(problems))
            with step("parity of the SavedModel against ONNX Runtime and PyTorch"):
                ort_logits = run_onnxruntime(onnxruntime_session(onnx_path), ref["inputs"], len(ref["inputs"]))
                tf_logits = run_serving(loaded, ref["inputs"], 8)
                vs_ort = compare(ort_logits, tf_logits)
                vs_torch = compare(ref["logits"], tf_logits)
                # A model whose own float32 rounding (PyTorch float32 vs float64) is larger is held to a multiple of it.
                allowed = max(CONVERSION_ATOL, ROUNDING_FACTOR * export_manifest.get("pytorch_float32_rounding", 0.0))
                if vs_ort["max_abs"] > allowed:
                    raise ConversionError(
                        f"{backend.NAME} changed the model: the SavedModel differs from ONNX Runtime on the same "
                        f"file by {vs_ort['max_abs']:.2e} (max abs, allowed {allowed:.1e})"
                    )
            bf16_parity = None
            if bf16:
                with step("bf16 parity: a Session with auto_mixed_precision_onednn_bfloat16 vs PyTorch, ONNX Runtime"):
                    bf16_parity, failed = check_bf16(staging, onnx_path, ref, Bf16Thresholds())
                if failed:
                    raise ConversionError("bf16 parity is outside its thresholds:\n  " + "\n  ".join(failed))
            with step("writing warmup records and the manifest"):
                write_warmup(staging, model_name, min(photo_bytes(ref), key=len))  # keep the file small
                manifest = {
                    "model_name": model_name,
                    "version": number,
                    "lane": lane,
                    "converter": backend.NAME,
                    "versions": {
                        **backend.versions(),
                        "tensorflow": tf.__version__,
                        "onnxruntime": onnxruntime.__version__,
                    },
                    # The file actually converted; differs from the export's record if it was edited since.
                    "source_onnx_sha256": onnx_sha256,
                    "source_onnx_is_the_export": onnx_sha256 == export_manifest["onnx_sha256"],
                    "export": {
                        "model": architecture,
                        "preprocessing": preprocessing.to_json(),
                        **{k: export_manifest[k] for k in EXPORT_FIELDS},
                        # A user's model: its factory, class count and labels file (absent from older exports).
                        **{k: export_manifest[k] for k in USER_MODEL_FIELDS if k in export_manifest},
                        "weights_description": weights,
                    },
                    "parity": {"savedmodel_vs_onnxruntime": vs_ort, "savedmodel_vs_pytorch": vs_torch},
                    # What pt2tf_convert.onnx_rewrite changed in the ONNX file before the converter read it.
                    "onnx_rewrite": asdict(onnx_rewrite),
                    # What pt2tf_convert.optimize did to the converter's graph (None: --no-optimize).
                    "graph_rewrite": None if rewrite is None else asdict(rewrite),
                    "precision": "bfloat16" if bf16 else "float32",
                }
                if bf16:
                    manifest["bf16"] = {
                        "session_config": "graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16: ON",
                        "serve_with": f"--platform_config_file={BF16_PLATFORM_CONFIG} (or --mixed_precision=bfloat16)",
                        "measured_on": cpu_info().describe(),
                        "parity": bf16_parity,
                    }
                    manifest["thresholds"] = asdict(Bf16Thresholds())
                manifest["converted_in_seconds"] = round(time.monotonic() - started, 1)
                (staging / "assets.extra" / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    target = models / model_name / str(number)
    print(
        f"convert done in {time.monotonic() - started:.0f} s: {target} "
        f"(vs ONNX Runtime {vs_ort['max_abs']:.1e}, vs PyTorch {vs_torch['max_abs']:.1e} max abs)",
        file=sys.stderr,
    )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lane", required=True)
    parser.add_argument("--converter", required=True, help="backend name: onnx-tf or onnx2tf")
    parser.add_argument("--artifacts", required=True, type=Path, help="the export stage's output directory")
    parser.add_argument("--models", required=True, type=Path, help="model repository base directory")
    parser.add_argument(
        "--model", help="the model the export must hold (default: whichever it holds, named in its export.json)"
    )
    parser.add_argument("--model-name", help="the served model's name (default: the exported model's, e.g. resnet18)")
    parser.add_argument("--version", type=int, help="version number to publish (default: the next one)")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="publish as <model-name>-bf16, for a server running oneDNN bf16 auto mixed precision "
        "(needs avx512_bf16 or amx_bf16)",
    )
    parser.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="publish the converter's graph as it is (no freezing, no transpose removal)",
    )
    args = parser.parse_args(argv)
    try:
        check_exported_model(args.artifacts, args.model)
        convert(
            args.lane,
            args.converter,
            args.artifacts,
            args.models,
            args.model_name,
            args.version,
            optimize_graph=args.optimize,
            bf16=args.bf16,
        )
    except (ArtifactsError, Bf16Error, ConversionError, RepositoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
