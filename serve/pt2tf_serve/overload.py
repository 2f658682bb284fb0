"""How fast overload is refused: `nox -s serve-overload` (reports/serve-overload.md).

The embedded server runs with docker/config's flags (32 gRPC and 16 REST request threads, 2 batch
threads) and a small queue (batches of 8, at most 2 waiting: it holds 16 requests, fewer than the
request threads plus the rows running), and takes floods of 10× and 100× that many simultaneous
callers, over gRPC and over REST, each sending one JPEG to `predict_images`. TF Serving refuses a
task the queue cannot hold at enqueue time (shared_batch_scheduler.h, UNAVAILABLE, HTTP 503), so a
refusal should arrive in milliseconds whatever the multiple. Reported per flood: how long refusals
and answers took (median, p99), how many of each, and the server's resident memory idle and at the
flood's peak.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pt2tf_convert.atomic import replace_file

from .cpu import cpu_info
from .process import ServerProcess, config_copy, embedded_flags

MODEL = "resnet18"
SMALL_QUEUE = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 2 }
num_batch_threads { value: 2 }
"""
QUEUE_HOLDS = 16
MULTIPLES = (10, 100)


@dataclass
class Flood:
    door: str
    callers: int
    refused: int
    served: int
    other: dict[str, int]  # any other answer: code → count
    not_found_p50_ms: float  # the same flood at a model the server lacks: what answering costs at all
    refusal_p50_ms: float
    refusal_p99_ms: float
    answer_p50_ms: float
    answer_p99_ms: float
    peak_rss_mib: float


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def _grpc_flood(target: str, photo: bytes, callers: int, model: str = MODEL) -> list[tuple[str, float]]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "predict_images"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([photo]))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def call() -> tuple[str, float]:
            started = time.monotonic()
            try:
                await stub.Predict(request, timeout=120)
                return "OK", time.monotonic() - started
            except grpc.aio.AioRpcError as error:
                return error.code().name, time.monotonic() - started

        return await asyncio.gather(*(call() for _ in range(callers)))


async def _rest_flood(url: str, photo: bytes, callers: int, model: str = MODEL) -> list[tuple[str, float]]:
    import aiohttp
    import orjson

    body = orjson.dumps({"signature_name": "predict_images", "instances": [{"b64": base64.b64encode(photo).decode()}]})
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def call() -> tuple[str, float]:
            started = time.monotonic()
            async with session.post(f"{url}/v1/models/{model}:predict", data=body) as answer:
                await answer.read()
            code = {200: "OK", 404: "NOT_FOUND", 503: "UNAVAILABLE"}.get(answer.status, str(answer.status))
            return code, time.monotonic() - started

        return await asyncio.gather(*(call() for _ in range(callers)))


def flood(server: ServerProcess, door: str, photo: bytes, callers: int) -> Flood:
    """One flood of `callers` simultaneous requests through `door` ("grpc" or "rest")."""
    run = _grpc_flood if door == "grpc" else _rest_flood
    target = server.grpc_target if door == "grpc" else server.rest_url
    not_found = [s for code, s in asyncio.run(run(target, photo, callers, "no_such_model")) if code == "NOT_FOUND"]
    peak = [server.rss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], server.rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        outcomes = asyncio.run(run(target, photo, callers))
    finally:
        done.set()
        sampler.join()
    refused = [s for code, s in outcomes if code == "UNAVAILABLE"]
    served = [s for code, s in outcomes if code == "OK"]
    other = Counter(code for code, _ in outcomes if code not in ("OK", "UNAVAILABLE"))
    return Flood(
        door, callers, len(refused), len(served), dict(other), _percentile(not_found, 50),
        _percentile(refused, 50), _percentile(refused, 99), _percentile(served, 50), _percentile(served, 99),
        peak[0] / 2**20,
    )  # fmt: skip


def report(cpu: str, idle_mib: float, floods: list[Flood]) -> str:
    lines = [
        "# Overload: how fast refusals arrive",
        "",
        f"CPU: {cpu}. Queue: batches of 8, at most 2 waiting ({QUEUE_HOLDS} requests); one JPEG",
        f"per request to `predict_images`; all callers at once. Idle RSS after warm-up: {idle_mib:.0f} MiB.",
        "",
        "`NOT_FOUND p50` is the same flood sent first to a model the server lacks: what answering that",
        "many callers costs at all here, client included, with no queue involved.",
        "",
        "| door | callers | refused | served | other | NOT_FOUND p50 ms | refusal p50 ms | refusal p99 ms | "
        "answer p50 ms | answer p99 ms | peak RSS MiB |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in floods:
        other = ", ".join(f"{code} {count}" for code, count in sorted(f.other.items())) or "0"
        lines.append(
            f"| {f.door} | {f.callers} | {f.refused} | {f.served} | {other} | {f.not_found_p50_ms:.1f} | "
            f"{f.refusal_p50_ms:.1f} | "
            f"{f.refusal_p99_ms:.1f} | {f.answer_p50_ms:.1f} | {f.answer_p99_ms:.1f} | {f.peak_rss_mib:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pt2tf-serve-overload", description=__doc__)
    parser.add_argument("--models", type=Path, required=True, help="model repository: <models>/resnet18/<version>/")
    parser.add_argument("--artifacts", type=Path, required=True, help="the export's output (reference inputs)")
    parser.add_argument("--out", type=Path, required=True, help="report path (.md; a .json is written beside)")
    args = parser.parse_args(argv)

    from pt2tf_convert.artifacts import load_reference, photo_bytes

    jpegs = [p for p in photo_bytes(load_reference(args.artifacts)) if p[:2] == b"\xff\xd8"]
    if not jpegs:
        parser.error(f"no JPEG among the reference photos in {args.artifacts}: run nox -s export first")
    cpu = cpu_info().describe()
    config = config_copy(Path(tempfile.mkdtemp(prefix="pt2tf-overload-")) / "config", batching=SMALL_QUEUE)
    floods = []
    with ServerProcess(embedded_flags(config, args.models)) as server:
        asyncio.run(_grpc_flood(server.grpc_target, jpegs[0], 2))  # settle before measuring idle memory
        asyncio.run(_rest_flood(server.rest_url, jpegs[0], 2))
        idle = server.rss_bytes() / 2**20
        for door in ("grpc", "rest"):
            for multiple in MULTIPLES:
                floods.append(flood(server, door, jpegs[0], multiple * QUEUE_HOLDS))
                print(floods[-1], flush=True)
        if server.process.poll() is not None:
            raise SystemExit(f"the server died during the floods:\n{server.tail()}")
    text = report(cpu, idle, floods)
    print(text)
    replace_file(args.out, text)
    payload = {"cpu": cpu, "idle_rss_mib": idle, "floods": [asdict(f) for f in floods]}
    replace_file(args.out.with_suffix(".json"), json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
