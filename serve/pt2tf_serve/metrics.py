"""TF Serving's metrics under their own names, rendered as its Prometheus exporter renders them.

TF metric `/tensorflow/serving/request_count` becomes `:tensorflow:serving:request_count`; there
are no HELP lines and no `_total` suffix, labels keep TF's names, histograms count values below
each limit and end with `+Inf`. (prometheus_client cannot write counters without `_total`,
which is why this module renders the page itself.)
"""

from __future__ import annotations

import math
import re
import threading
import urllib.request
from dataclasses import dataclass, field

# Names as they appear on the page, for those who read it (benches, the load test).
PROCESSED_BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
REQUEST_COUNT = ":tensorflow:serving:request_count"


def parse_page(page: str) -> dict[str, float]:
    """The samples of a Prometheus page, in page order: `name{labels}` → value."""
    samples = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def fetch_page(rest_url: str, path: str = "/monitoring/prometheus/metrics", timeout: float = 30) -> dict[str, float]:
    """The samples of a server's Prometheus page (raises OSError when it cannot be read)."""
    with urllib.request.urlopen(rest_url + path, timeout=timeout) as answer:
        return parse_page(answer.read().decode())


def exponential(start: float, factor: float, count: int) -> list[float]:
    """TF's Buckets::Exponential: start·factor^i for i < count, then +Inf."""
    return [start * factor**i for i in range(count)] + [math.inf]


LATENCY_BUCKETS = exponential(10, 1.8, 33)  # microseconds
QUEUING_BUCKETS = exponential(100, 1.2, 52)  # microseconds
BATCH_SIZE_BUCKETS = exponential(1, 2, 14)


def _g(value: float) -> str:
    """absl::StrCat of a double: %.6g."""
    return "+Inf" if value == math.inf else f"{value:.6g}"


@dataclass
class _Histogram:
    limits: list[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self):
        self.counts = [0] * len(self.limits)

    def observe(self, value: float) -> None:
        for index, limit in enumerate(self.limits):
            if value < limit:
                self.counts[index] += 1
                break
        self.total += value


@dataclass
class _Metric:
    name: str
    kind: str  # counter | histogram
    label_names: tuple[str, ...]
    limits: list[float] | None = None
    cells: dict[tuple[str, ...], object] = field(default_factory=dict)


def _exported(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", ":", name)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class Metrics:
    """The server's metric registry; every call is thread-safe and cheap."""

    def __init__(self):
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}
        for name, kind, labels, limits in (
            ("/tensorflow/serving/request_count", "counter", ("model_name", "status"), None),
            ("/tensorflow/serving/request_latency", "histogram", ("model_name", "API", "entrypoint"), LATENCY_BUCKETS),
            ("/tensorflow/serving/runtime_latency", "histogram", ("model_name", "API", "runtime"), LATENCY_BUCKETS),
            ("/tensorflow/serving/model_warmup_latency", "histogram", ("model_path", "status"), LATENCY_BUCKETS),
            ("/tensorflow/serving/model_warmup_records_read", "counter", ("model_path", "status"), None),
            (
                "/tensorflow/serving/batching_session/queuing_latency",
                "histogram",
                ("thread_pool_name",),
                QUEUING_BUCKETS,
            ),
            ("/tensorflow/serving/batching_session/wrapped_run_count", "counter", (), None),
            ("/tensorflow/serving/batching_session/input_batch_size", "histogram", (), BATCH_SIZE_BUCKETS),
            ("/tensorflow/serving/batching_session/processed_batch_size", "histogram", (), BATCH_SIZE_BUCKETS),
            (
                "/tensorflow/serving/batching_session/padding_size",
                "histogram",
                ("execution_batch_size",),
                BATCH_SIZE_BUCKETS,
            ),
        ):
            self._metrics[name] = _Metric(name, kind, labels, limits)

    def _add(self, name: str, labels: tuple[str, ...], value: float = 1) -> None:
        metric = self._metrics[name]
        with self._lock:
            if metric.kind == "counter":
                metric.cells[labels] = metric.cells.get(labels, 0) + value
            else:
                cell = metric.cells.get(labels)
                if cell is None:
                    cell = metric.cells[labels] = _Histogram(metric.limits)
                cell.observe(value)

    # -- what the server records

    def request(self, model: str, status: str, api: str, entrypoint: str, seconds: float) -> None:
        """One request handled: counted always, its latency only when it succeeded (as TF Serving)."""
        self._add("/tensorflow/serving/request_count", (model, status))
        if status == "OK":
            self._add("/tensorflow/serving/request_latency", (model, api, entrypoint), seconds * 1e6)

    def runtime_latency(self, model: str, api: str, seconds: float) -> None:
        self._add("/tensorflow/serving/runtime_latency", (model, api, "TF1"), seconds * 1e6)

    def warmup(self, model_path: str, status: str, seconds: float, records: int) -> None:
        self._add("/tensorflow/serving/model_warmup_latency", (model_path, status), seconds * 1e6)
        self._add("/tensorflow/serving/model_warmup_records_read", (model_path, status), records)

    def batch(self, input_size: int, padded_size: int, queuing_seconds: list[float]) -> None:
        self._add("/tensorflow/serving/batching_session/wrapped_run_count", ())
        self._add("/tensorflow/serving/batching_session/input_batch_size", (), input_size)
        self._add("/tensorflow/serving/batching_session/processed_batch_size", (), padded_size)
        self._add("/tensorflow/serving/batching_session/padding_size", (str(padded_size),), padded_size - input_size)
        for seconds in queuing_seconds:
            self._add(
                "/tensorflow/serving/batching_session/queuing_latency", ("model_server_batch_threads",), seconds * 1e6
            )

    # -- the page

    def render(self) -> str:
        """The Prometheus exposition page, metrics in name order."""
        lines = []
        with self._lock:
            for name in sorted(self._metrics):
                metric = self._metrics[name]
                exported = _exported(name)
                lines.append(f"# TYPE {exported} {metric.kind}")
                for labels, cell in sorted(metric.cells.items()):
                    pairs = [f'{k}="{_escape(v)}"' for k, v in zip(metric.label_names, labels, strict=True)]
                    if metric.kind == "counter":
                        lines.append(f"{exported}{{{','.join(pairs)}}} {int(cell)}")
                        continue
                    cumulative = 0
                    for limit, count in zip(cell.limits, cell.counts, strict=True):
                        cumulative += count
                        bucket = ",".join([*pairs, f'le="{_g(limit)}"'])
                        lines.append(f"{exported}_bucket{{{bucket}}} {cumulative}")
                    lines.append(f"{exported}_sum{{{','.join(pairs)}}} {_g(cell.total)}")
                    lines.append(f"{exported}_count{{{','.join(pairs)}}} {cumulative}")
        return "\n".join(lines) + "\n"
