"""Export a torchvision classifier (ResNet18 by default) to ONNX with a symbolic batch axis, and the PyTorch
reference outputs.

    python -m pt2tf_convert.export --lane onnx2tf --exporter dynamo --opset 18 --out artifacts/onnx2tf \
        [--model mobilenet_v3_small]

Writes into --out (atomically, replacing a previous export): model.onnx, reference.npz
(inputs + PyTorch logits + photos + ImageNet labels) and export.json (the manifest, which names
the model and the preprocessing its torchvision weights specify: later stages build from it).
The export is done only once onnx.checker accepts the file, its batch axis is symbolic,
and ONNX Runtime reproduces PyTorch on the reference inputs at several batch sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import torchvision

from .artifacts import sha256
from .atomic import replace_dir
from .metrics import ROUNDING_FACTOR, discrimination
from .model import (
    SEEDED,
    ModelError,
    WeightsError,
    build_model,
    check_model_name,
    default_weights,
    is_torchvision_name,
    labels_for,
    preprocessing_for,
    torchvision_weights,
)
from .preprocessing import DEFAULT_MODEL, INPUT_SIZE
from .progress import step
from .reference import reference_inputs, save_reference
from .runtimes import onnxruntime_session, run_onnxruntime
from .user_model import SpecError, build_user_model, is_factory, load_factory, load_spec

INPUT_NAME = "input"
OUTPUT_NAME = "output"
CHECK_BATCH_SIZES = (1, 3, 8)


class ExportError(RuntimeError):
    """The exported file is not what later stages need; the message says why."""


def export_onnx(model: torch.nn.Module, path: Path, exporter: str, opset: int) -> None:
    """Write `model` as ONNX with input 'input' [batch,3,224,224] and output 'output' [batch,classes]."""
    if model.training:
        raise ExportError("the model is in training mode; BatchNorm and Dropout would export wrongly — call .eval()")
    example = torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE)  # batch 2: an exporter may specialize a batch of 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        if exporter == "torchscript":
            with _attention_at_opset_13(opset):
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    do_constant_folding=True,
                )
        elif exporter == "dynamo":
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                optimize=True,
                verbose=False,
            )
            program.save(str(path), external_data=False)
        else:
            raise ExportError(f"unknown exporter '{exporter}': use 'torchscript' or 'dynamo'")


@contextlib.contextmanager
def _attention_at_opset_13(opset: int):
    """The TorchScript exporter writes scaled_dot_product_attention from opset 14 on, with MatMul, Softmax,
    Transpose, Mul and Sqrt (Shape, Slice, Cast and Div for the default scale; Add, Where and IsNaN with a mask):
    operators opset 13 has with the same meaning (Slice with its bounds as inputs, Softmax over one axis). At
    opset 13 (the onnx-tf lane's; ViT's attention needed it) that same rule is registered for the export's
    duration, and removed after; at other opsets the exporter is left as it is. A causal mask needs Trilu, which
    opset 13 lacks: refused with the exporter's own error, naming the operator and opset 14."""
    if opset != 13:
        yield
        return
    from torch.onnx import errors, symbolic_helper, symbolic_opset14

    @symbolic_helper.parse_args("v", "v", "v", "v", "f", "b", "v", "b")
    def attention(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, gqa=False):
        if is_causal:
            raise errors.UnsupportedOperatorError("aten::scaled_dot_product_attention (is_causal)", opset, 14)
        rule = symbolic_opset14.scaled_dot_product_attention  # its own parse_args passes parsed values through
        return rule(g, query, key, value, attn_mask, dropout_p, is_causal, scale, gqa)

    torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention", attention, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::scaled_dot_product_attention", opset)


def exporter_error(exc: BaseException) -> str:
    """The lines of an exporter's error that say what it could not take (the operator, the construct), in one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if any(word in line for word in ("nsupported", "operator", "aten::", "Error"))]
    picked = (telling or lines or [""])[:3]
    return f"{type(exc).__name__}: " + " | ".join(line[:300] for line in picked)


def float32_rounding(model: torch.nn.Module, inputs: torch.Tensor, logits: np.ndarray) -> float:
    """How far the model's float32 logits are from its float64 ones: its own rounding, the floor any other
    float32 implementation (ONNX Runtime, TensorFlow) can be expected to match it to."""
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(inputs.double()).numpy()
    return float(np.max(np.abs(logits.astype(np.float64) - exact)))


def check_symbolic_batch(model: onnx.ModelProto) -> str:
    """Return the batch axis' symbol; fail if any graph input or output has a fixed batch size."""
    symbols = set()
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise ExportError(f"ONNX {value.name!r} has no shape; the exporter lost it")
        first = dims[0]
        if first.HasField("dim_value") or not first.dim_param:
            raise ExportError(
                f"ONNX {value.name!r} has a fixed batch size of {first.dim_value}: the exporter "
                "specialized the batch axis, so TF Serving could not batch requests. Export with a "
                "dynamic batch axis (dynamic_axes / dynamic_shapes)"
            )
        symbols.add(first.dim_param)
    if len(symbols) != 1:
        raise ExportError(f"inputs and outputs use different batch symbols {sorted(symbols)}")
    return symbols.pop()


def check_opset(model: onnx.ModelProto, opset: int) -> None:
    """The default-domain opset must be the lane's: converters support a fixed range."""
    found = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    if found.get("ai.onnx") != opset:
        raise ExportError(f"the exporter wrote opset {found.get('ai.onnx')}, the lane needs {opset}")


def export(
    lane: str,
    exporter: str,
    opset: int,
    out: Path,
    weights: str = SEEDED,
    seed: int = 0,
    atol: float = 1e-5,
    model_name: str = DEFAULT_MODEL,
    spec: Path | None = None,
) -> dict:
    """Export, check and write the lane's ONNX file, reference and manifest into `out`.

    `model_name` is a torchvision classifier, or the user's `package.module:factory` with its preprocessing
    `spec` file (pt2tf_convert.user_model)."""
    user_spec, factory = None, None
    if is_factory(model_name):
        if spec is None:
            raise SpecError(f"--model {model_name}: your own model needs --spec FILE, its preprocessing and labels")
        user_spec, factory = load_spec(spec, model_name), model_name
        load_factory(factory)  # before any work: a module that does not import fails now
        preprocessing, spec_weights, transform = user_spec.preprocessing, None, user_spec.transform()
        model_name = user_spec.name
    else:
        if spec is not None:
            raise SpecError(
                f"--spec {spec}: {model_name}'s preprocessing and labels are its torchvision weights'; --spec is for "
                "your own model (--model package.module:factory)"
            )
        check_model_name(model_name)
        # Named torchvision weights bring their own transforms (resnet50's V1 and V2 resize differently).
        spec_weights = (
            torchvision_weights(weights, model_name) if weights != SEEDED and is_torchvision_name(weights) else None
        )
        spec_weights = spec_weights or default_weights(model_name)
        preprocessing = preprocessing_for(model_name, spec_weights)  # before any work: a crop the contract lacks
        labels, transform = labels_for(model_name, spec_weights), None
    shown = f"{model_name} ({factory})" if factory else model_name
    print(f"export {shown} for lane '{lane}': {exporter} exporter, opset {opset} → {out}", file=sys.stderr)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with replace_dir(out) as tmp:
        with step(f"preparing reference inputs (seeded tensors + scikit-image photos; {preprocessing.describe()})"):
            ref = reference_inputs(seed, spec_weights, transform) if factory else reference_inputs(seed, spec_weights)
        what = "seeded weights, classifier calibrated on the reference inputs" if weights == SEEDED else weights
        with step(f"building {shown} ({what})"):
            if factory:
                model, source, labels = build_user_model(
                    factory, user_spec, weights, seed, torch.from_numpy(ref.inputs)
                )
            else:
                model, source = build_model(weights, seed, torch.from_numpy(ref.inputs), model_name)
        with step(f"running PyTorch {torch.__version__} on {len(ref.inputs)} reference inputs"), torch.no_grad():
            logits = model(torch.from_numpy(ref.inputs)).numpy()
        if logits.shape != (len(ref.inputs), len(labels)):
            raise ExportError(
                f"{model_name} answers {list(logits.shape)} logits, the contract has [batch, {len(labels)}]"
            )
        answers = discrimination(logits)
        with step("measuring the model's own float32 rounding (PyTorch float32 vs float64)"):
            rounding = float32_rounding(model, torch.from_numpy(ref.inputs), logits)
        onnx_path = tmp / "model.onnx"
        with step(f"exporting ONNX ({exporter} exporter, opset {opset})"):
            try:
                export_onnx(model, onnx_path, exporter, opset)
            except ExportError:
                raise
            except Exception as exc:  # the exporter's own error names the operator or construct it cannot take
                raise ExportError(
                    f"the {exporter} exporter (opset {opset}) cannot take {shown}: {exporter_error(exc)}"
                ) from exc
        with step("checking the ONNX file (onnx.checker, opset, symbolic batch axis)"):
            onnx.checker.check_model(str(onnx_path), full_check=True)
            proto = onnx.load(str(onnx_path))
            check_opset(proto, opset)
            batch_symbol = check_symbolic_batch(proto)
        errors = {}
        with step(f"running ONNX Runtime {onnxruntime.__version__} at batch sizes {CHECK_BATCH_SIZES}"):
            session = onnxruntime_session(onnx_path)
            for batch_size in CHECK_BATCH_SIZES:
                ort_logits = run_onnxruntime(session, ref.inputs, batch_size)
                errors[batch_size] = float(np.max(np.abs(ort_logits - logits)))
        worst = max(errors.values())
        tolerance = max(atol, ROUNDING_FACTOR * rounding)
        if worst > tolerance:
            raise ExportError(
                f"ONNX Runtime differs from PyTorch by up to {worst:.2e} (max abs; allowed {tolerance:.1e}, the "
                f"larger of {atol:.0e} and {ROUNDING_FACTOR:g} × PyTorch's own float32 rounding {rounding:.1e}) per "
                f"batch size {errors}: the exported graph is not the PyTorch model"
            )
        save_reference(tmp / "reference.npz", ref, logits, labels)
        manifest = {
            "model": model_name,
            "preprocessing": preprocessing.to_json(),
            "factory": factory,  # the user's package.module:factory; None for a torchvision classifier
            "num_classes": len(labels),
            "labels_source": user_spec.labels_source if user_spec else f"{preprocessing.source} (torchvision)",
            "lane": lane,
            "exporter": exporter,
            "opset": opset,
            "ir_version": proto.ir_version,
            "batch_axis": batch_symbol,
            "input": {"name": INPUT_NAME, "shape": [batch_symbol, 3, INPUT_SIZE, INPUT_SIZE], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": [batch_symbol, len(labels)], "dtype": "float32"},
            "weights": source.source,
            "seed": source.seed,
            "weights_sha256": source.sha256,
            "weights_description": source.describe(),
            "classifier_calibration": source.calibration or None,
            "reference_answers": answers,
            "onnx_sha256": sha256(onnx_path),
            "reference": {"count": len(ref.names), "names": ref.names},
            "onnxruntime_vs_pytorch_max_abs": {str(k): v for k, v in errors.items()},
            "pytorch_float32_rounding": rounding,
            "onnxruntime_vs_pytorch_tolerance": tolerance,
            "versions": {
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
        }
        (tmp / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"export done: {out / 'model.onnx'} (ONNX Runtime vs PyTorch max abs {worst:.2e})", file=sys.stderr)
    print(
        f"reference answers: {answers['distinct_top1']} distinct top-1 classes among {answers['inputs']} inputs, "
        f"smallest top-1 margin {answers['min_margin']:.3f}; {source.describe()}",
        file=sys.stderr,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lane", required=True, help="lane name, recorded in the manifest")
    parser.add_argument("--exporter", required=True, choices=["torchscript", "dynamo"])
    parser.add_argument("--opset", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="directory to write (replaced atomically)")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a torchvision ImageNet classifier whose weights crop to 224, e.g. mobilenet_v3_small "
        f"(default {DEFAULT_MODEL}); or your own: package.module:factory, a function returning the nn.Module "
        "(importable: on PYTHONPATH), with --spec",
    )
    parser.add_argument(
        "--spec",
        type=Path,
        help="your own model's preprocessing and labels, a TOML file: name, resize, crop, interpolation, mean, std, "
        "labels (README: your own model)",
    )
    parser.add_argument(
        "--weights",
        default=SEEDED,
        help="'seeded' (default), a state_dict file, or a torchvision name such as IMAGENET1K_V1 "
        "of --model's weights (from the torch hub cache, downloaded and sha256-checked there when absent and the "
        "network is reachable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for seeded weights and the random inputs")
    parser.add_argument(
        "--atol",
        type=float,
        default=1e-5,
        help="max abs difference allowed between ONNX Runtime and PyTorch (or 4× PyTorch's own float32 rounding, "
        "when larger)",
    )

    args = parser.parse_args(argv)
    try:
        export(
            args.lane, args.exporter, args.opset, args.out, args.weights, args.seed, args.atol, args.model, args.spec
        )
    except (ModelError, WeightsError, ExportError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
