"""What the model can do in process on this machine, as the server runs it: the gate's yardstick.

A load test's absolute figures say as much about the CPU as about the deployment (the AVX2 EPYC
runs this ResNet18 3× slower than the AVX-512 one). So before the sweep the runner measures, on
the same machine and in the same run, the model in a TensorFlow Session with the session config
the server's own flags give (TF Serving's path: the MetaGraph in a Session), and the default
objectives are fractions and multiples of that.

Run in the lane's serve env (TensorFlow and pt2tf_serve), which the runner does by itself:

    python -m pt2tf_loadtest.capacity --artifacts artifacts/onnx2tf --model-dir models/onnx2tf/resnet18 \\
        --out capacity.json -- --model_config_file=... --platform_config_file=...   (the server's flags)

Per signature it writes the median latency at batch 1 and the images/s at each batch size the
server may run (1, 4, 8, 16, 32, up to the batching's execution batch size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SIGNATURES = {"serving_default": ("input", "output"), "predict_images": ("image_bytes", "classes")}
BATCH_SIZES = (1, 4, 8, 16, 32)
MIN_SECONDS, MIN_RUNS = 1.0, 3  # per batch size: enough runs for a median on a noisy shared machine


class CapacityError(ValueError):
    """The capacity file is missing, malformed, or lacks what an objective needs."""


@dataclass(frozen=True)
class SignatureCapacity:
    batch_1_ms: float  # median latency of one image
    images_per_second: dict[int, float]  # batch size → img/s

    def rate_at(self, users: int) -> float:
        """img/s in process with `users` requests waiting: the best batch of at most `users` rows."""
        sizes = [b for b in self.images_per_second if b <= users] or [min(self.images_per_second)]
        return max(self.images_per_second[b] for b in sizes)

    def latency_ms_at(self, users: int) -> float:
        """The time to answer `users` waiting requests at that rate (never below one image's latency)."""
        return max(self.batch_1_ms, users * 1000.0 / self.rate_at(users))

    @property
    def best(self) -> float:
        return max(self.images_per_second.values())


@dataclass(frozen=True)
class Capacity:
    cpu: str
    kind: str
    model: str
    version: int
    session: str  # the ConfigProto's threads and rewrites, one line
    seconds: float
    signatures: dict[str, SignatureCapacity]

    def of(self, signature: str) -> SignatureCapacity:
        if signature not in self.signatures:
            raise CapacityError(f"the capacity measurement has no '{signature}' (has {', '.join(self.signatures)})")
        return self.signatures[signature]

    def describe(self) -> str:
        parts = [
            f"{name}: best {cap.best:.1f} img/s (batch {max(cap.images_per_second, key=cap.images_per_second.get)}), "
            f"batch 1 {cap.batch_1_ms:.0f} ms"
            for name, cap in self.signatures.items()
        ]
        return f"{self.model} v{self.version} in process ({self.session}) on {self.cpu}: " + "; ".join(parts)

    def to_json(self) -> dict:
        return asdict(self)


def from_json(data: dict) -> Capacity:
    try:
        signatures = {
            name: SignatureCapacity(
                float(s["batch_1_ms"]), {int(b): float(r) for b, r in s["images_per_second"].items()}
            )
            for name, s in data["signatures"].items()
        }
        fields = {k: data[k] for k in ("cpu", "kind", "model", "version", "session", "seconds")}
    except (KeyError, TypeError, ValueError) as exc:
        raise CapacityError(f"not a capacity measurement (pt2tf_loadtest.capacity's JSON): {exc!r}") from None
    return Capacity(**fields, signatures=signatures)


def load(path: Path) -> Capacity:
    try:
        return from_json(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise CapacityError(f"capacity file {path} is missing") from None
    except json.JSONDecodeError as exc:
        raise CapacityError(f"capacity file {path} is not JSON: {exc}") from None


def scenario_signature(scenario: str) -> str:
    """The signature a load-test scenario calls: '*-tensor' → serving_default, '*-image' → predict_images."""
    return "predict_images" if scenario.endswith("-image") else "serving_default"


# ---------------------------------------------------------------------------- the measurement (serve env)


def _payloads(artifacts: Path) -> dict[str, list[np.ndarray]]:
    from .inputs import load_inputs

    inputs = load_inputs(artifacts)
    return {
        "serving_default": [p.grpc_value for p in inputs.tensors],
        "predict_images": [p.grpc_value for p in inputs.images],
    }


def _batch(items: list[np.ndarray], size: int) -> np.ndarray:
    return np.concatenate([items[i % len(items)] for i in range(size)])


def measure(artifacts: Path, model_dir: Path, server_flags: list[str], version: int | None = None) -> Capacity:
    """Load a version of `model_dir` in a Session configured as the server's flags say, and time it."""
    from pt2tf_convert.repository import versions
    from pt2tf_serve.cpu import cpu_info
    from pt2tf_serve.flags import parse_flags
    from pt2tf_serve.servable import Servable
    from pt2tf_serve.server import session_settings

    options = parse_flags(server_flags)
    settings = session_settings(options)
    base = Path(model_dir)
    found = versions(base)
    if not found:
        raise CapacityError(f"no model version under {base}: convert one first (nox -s convert)")
    version = version or found[-1]
    limit = settings.batching.execution_batch_size if settings.batching else max(BATCH_SIZES)
    sizes = [b for b in BATCH_SIZES if b <= limit] or [1]
    config = settings.session_config
    session = f"intra-op {config.intra_op_parallelism_threads}, inter-op {config.inter_op_parallelism_threads}" + (
        ", bf16" if settings.bf16 else ""
    )
    payloads = _payloads(artifacts)
    started = time.monotonic()
    servable = Servable(base.name, version, base / str(version), config, list(settings.saved_model_tags))
    try:
        measured = {}
        for name, (input_key, output_key) in SIGNATURES.items():
            signature = servable.signatures.get(name)
            if signature is None:
                continue
            rates, batch_1_ms = {}, 0.0
            for size in sizes:
                feed = {input_key: _batch(payloads[name], size)}
                servable.run(signature, feed, (output_key,))  # first run of a shape: kernels and caches
                times = []
                while len(times) < MIN_RUNS or sum(times) < MIN_SECONDS:
                    tick = time.perf_counter()
                    servable.run(signature, feed, (output_key,))
                    times.append(time.perf_counter() - tick)
                # The median run: one run slowed by another process on a shared machine does not move it.
                rates[size] = size / float(np.median(times))
                if size == 1:
                    batch_1_ms = float(np.median(times) * 1000)
                print(f"  capacity {name} batch {size:2d}: {rates[size]:6.1f} img/s", file=sys.stderr, flush=True)
            measured[name] = SignatureCapacity(batch_1_ms, rates)
    finally:
        servable.close()
    info = cpu_info()
    return Capacity(info.describe(), info.kind, base.name, version, session,
                    round(time.monotonic() - started, 1), measured)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pt2tf_loadtest.capacity", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--artifacts", type=Path, required=True, help="the export's output: reference photos")
    parser.add_argument("--model-dir", type=Path, required=True, help="the model's folder of versions")
    parser.add_argument("--out", type=Path, required=True, help="where to write the capacity JSON")
    parser.add_argument("--version", type=int, help="model version to measure (default: the newest)")
    parser.add_argument("server_flags", nargs="*", help="the server's tensorflow_model_server flags, after --")
    args = parser.parse_args(argv)
    try:
        capacity = measure(args.artifacts, args.model_dir, args.server_flags, args.version)
    except (CapacityError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(capacity.to_json(), indent=1) + "\n")
    tmp.replace(args.out)
    print(capacity.describe(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
