"""Serve the lane's model repository and check it end to end: `nox -s serve-check` (part of `make all`).

Starts the embedded server with docker/config's flags and files, classifies the reference photos
with the exported model (`--model`, default: the one the export holds, e.g. resnet18)
over REST and gRPC with pt2tf-client's library, and compares each top-5 with in-process
`tf.saved_model.load` on the same version. Exits non-zero, naming the photo, on any difference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from .client import GrpcClient, RestClient, top5, weights_stated
from .process import ServerProcess, config_copy, embedded_flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pt2tf-serve-check", description=__doc__)
    parser.add_argument("--models", type=Path, required=True, help="model repository: <models>/<model>/<version>/")
    parser.add_argument("--artifacts", type=Path, required=True, help="the export's output (reference photos)")
    parser.add_argument("--model", help="the served model to check (default: the exported one, named in export.json)")
    args = parser.parse_args(argv)

    import tensorflow as tf
    from pt2tf_convert.artifacts import ArtifactsError, check_exported_model, load_reference, photo_bytes, read_export
    from pt2tf_convert.preprocessing import exported_model
    from pt2tf_convert.repository import versions

    try:
        check_exported_model(args.artifacts, args.model)
        model = args.model or exported_model(read_export(args.artifacts))[0]
    except ArtifactsError as exc:
        parser.error(str(exc))
    found = versions(args.models / model)
    if not found:
        parser.error(f"no model version under {args.models / model}: run nox -s convert first")
    reference = load_reference(args.artifacts)
    photos = photo_bytes(reference)
    names = [str(n) for n in reference["photo_names"]]
    loaded = tf.saved_model.load(str(args.models / model / str(max(found))))
    local = {k: v.numpy() for k, v in loaded.signatures["predict_images"](image_bytes=tf.constant(photos)).items()}
    want = top5(local)
    # None for a version converted before predict_images named its weights: its top-5 is still checked.
    stated = (weights_stated(local) or [None])[0]

    config = config_copy(Path(tempfile.mkdtemp(prefix="pt2tf-check-")) / "config", model=model)
    problems = []
    with ServerProcess(embedded_flags(config, args.models)) as server:
        print(f"embedded server up: REST {server.rest_url}, gRPC {server.grpc_target}", flush=True)
        with RestClient(server.rest_url, timeout=60) as rest, GrpcClient(server.grpc_target, timeout=60) as grpc:
            print(f"{'photo':<20} {'REST ms':>8} {'gRPC ms':>8}  top-1 (same over REST, gRPC and in process)")
            for index, (name, photo) in enumerate(zip(names, photos, strict=True)):
                rows, times = [], []
                for client in (rest, grpc):
                    started = time.monotonic()
                    outputs = client.predict(model, {"image_bytes": [photo]}, signature="predict_images")
                    times.append((time.monotonic() - started) * 1000)
                    rows.append(top5(outputs)[0])
                    if stated is not None and weights_stated(outputs) != [stated]:
                        problems.append(f"{name}: the answer says weights {weights_stated(outputs)}, not {stated!r}")
                for via, row in zip(("REST", "gRPC"), rows, strict=True):
                    if [c for c, _, _ in row] != [c for c, _, _ in want[index]]:
                        problems.append(f"{name}: {via} top-5 {row} differs from in-process {want[index]}")
                    if not np.allclose([s for *_, s in row], [s for *_, s in want[index]], atol=1e-4):
                        problems.append(f"{name}: {via} scores differ from in process")
                klass, label, score = rows[0][0]
                print(f"{name:<20} {times[0]:8.1f} {times[1]:8.1f}  {klass:4d} {label} ({score:.3f})")
    for problem in problems:
        print(f"MISMATCH {problem}")
    print(f"{model}: served answers match in-process TensorFlow" if not problems else f"{len(problems)} mismatches")
    print(f"weights: {stated or 'not stated (a version converted before answers named them: convert again)'}")
    if stated and stated.startswith("seeded"):
        print("  (nox -s export -- --weights IMAGENET1K_V1 or --weights FILE for real ones)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
