"""reports/loadtest/: a Markdown summary, a self-contained HTML page with plots, and the raw CSV/JSON."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .capacity import scenario_signature

COLUMNS = [
    "scenario", "batching", "label", "concurrency", "offered_rate", "seconds", "requests", "failures",
    "requests_per_second", "images_per_second", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "lag_p99_ms",
    "generator_cpu", "unreliable", "server_requests",
]  # fmt: skip


def verdict_text(verdicts) -> str:
    missed = [v for v in verdicts if not v.ok]
    if not missed:
        return f"VERDICT: ready to roll out — all {len(verdicts)} objectives met"
    lines = [f"VERDICT: not yet — {len(missed)} of {len(verdicts)} objectives missed:"]
    lines += [f"  {v.scenario}: {v.objective} {v.measured}, wanted {v.wanted}" for v in missed]
    return "\n".join(lines)


def _plots(steps, capacity=None, open_steps=(), searches=()) -> bytes:
    scenarios = list(dict.fromkeys([*(s.scenario for s in [*steps, *open_steps]), *(s.scenario for s in searches)]))
    columns = 4 if open_steps or searches else 3
    figure, axes = plt.subplots(len(scenarios), columns, figsize=(5 * columns, 4 * len(scenarios)), squeeze=False)
    for row, scenario in enumerate(scenarios):
        mine = [s for s in steps if s.scenario == scenario]
        throughput, latency, batches = axes[row][:3]
        if open_steps or searches:
            _open_plot(axes[row][3], scenario, [s for s in open_steps if s.scenario == scenario], capacity,
                       [s for s in searches if s.scenario == scenario])  # fmt: skip
        if not mine:
            for ax in (throughput, latency, batches):
                ax.set_axis_off()
            continue
        for setting in dict.fromkeys(s.batching for s in mine):
            series = sorted((s for s in mine if s.batching == setting), key=lambda s: s.concurrency)
            xs = [s.concurrency for s in series]
            throughput.plot(xs, [s.images_per_second for s in series], marker="o", label=f"batching {setting}")
            latency.plot(xs, [s.p50_ms for s in series], marker="o", label=f"p50, batching {setting}")
            latency.plot(xs, [s.p99_ms for s in series], marker="s", linestyle="--", label=f"p99, batching {setting}")
            for s in series:
                if s.unreliable:
                    throughput.annotate("generator saturated", (s.concurrency, s.images_per_second), fontsize=7)
        if capacity is not None:  # the yardstick at each load, so a miss reads as deployment or hardware
            own, xs = capacity.of(scenario_signature(scenario)), sorted({s.concurrency for s in mine})
            throughput.plot(xs, [own.rate_at(c) for c in xs], color="grey", linestyle=":", label="in process")
            latency.plot(xs, [own.latency_ms_at(c) for c in xs], color="grey", linestyle=":", label="in process")
        throughput.set(title=f"{scenario}: throughput", xlabel="concurrent users", ylabel="images/s")
        latency.set(title=f"{scenario}: latency", xlabel="concurrent users", ylabel="ms")
        for ax in (throughput, latency):
            ax.set_xscale("log", base=2)
            ax.set_xticks(
                sorted({s.concurrency for s in mine}), [str(c) for c in sorted({s.concurrency for s in mine})]
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        batched = [s for s in mine if s.batches]
        if batched:
            top = max(batched, key=lambda s: (s.batching == "on", s.concurrency))
            labels, counts = list(top.batches), list(top.batches.values())
            batches.bar(range(len(labels)), counts, color="tab:green")
            batches.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
            batches.set(
                title=f"{scenario}: batch sizes, {top.concurrency} users",
                xlabel="rows per batch (server side)",
                ylabel="batches",
            )
        else:
            batches.text(0.5, 0.5, "no batching metrics\n(batching off, or no Prometheus page)", ha="center")
            batches.set_axis_off()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _open_plot(ax, scenario: str, steps, capacity, searches=()) -> None:
    """p50 and p99 against the achieved rate, per batching setting: the latency–throughput curve, with the
    knee and the capacity at the p99 objective of each search marked."""
    curves = {}
    for step in steps:
        curves.setdefault(step.batching, []).append(step)
    for found in searches:
        curves.setdefault(found.batching, []).extend(p.step for p in found.probes)
    for setting, series in curves.items():
        series = sorted(series, key=lambda s: s.offered_rate)
        xs = [s.images_per_second for s in series]
        (p50,) = ax.plot(xs, [s.p50_ms for s in series], marker="o", label=f"p50, batching {setting}")
        ax.plot(xs, [s.p99_ms for s in series], marker="s", linestyle="--", color=p50.get_color(),
                label=f"p99, batching {setting}")  # fmt: skip
        found = next((f for f in searches if f.batching == setting), None)
        if found is not None and found.capacity is not None:
            ax.axvline(found.capacity, color=p50.get_color(), linewidth=2, alpha=0.5,
                       label=f"capacity at p99 ≤ {found.bound_ms:.0f} ms, batching {setting}")  # fmt: skip
        if found is not None and found.knee is not None:
            ax.axvline(found.knee, color=p50.get_color(), linestyle="-.", alpha=0.7, label=f"knee, batching {setting}")
    bounds = {f.bound_ms for f in searches}
    for bound in bounds:
        ax.axhline(bound, color="red", linestyle=":", label=f"p99 objective {bound:.0f} ms")
    if capacity is not None:
        ax.axvline(capacity.of(scenario_signature(scenario)).best, color="grey", linestyle=":",
                   label="in-process best")  # fmt: skip
    ax.set(title=f"{scenario}: open loop", xlabel="achieved images/s", ylabel="ms")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _step_rows(steps, capacity=None) -> list[list]:
    rows = []
    for s in steps:
        beside = []
        if capacity is not None:  # the machine's yardstick beside every served figure
            own = capacity.of(scenario_signature(s.scenario))
            ceiling, expected = own.rate_at(s.concurrency), own.latency_ms_at(s.concurrency)
            beside = [f"{ceiling:.1f} ({s.images_per_second / ceiling:.2f}×)",
                      f"{expected:.0f} ({s.p99_ms / expected:.1f}×)"]  # fmt: skip
        rows.append(
            [s.scenario, s.batching, s.label or "–", s.concurrency, f"{s.images_per_second:.1f}",
             f"{s.requests_per_second:.1f}", f"{s.p50_ms:.0f}", f"{s.p90_ms:.0f}", f"{s.p95_ms:.0f}",
             f"{s.p99_ms:.0f}", f"{s.max_ms:.0f}", *beside,
             f"{s.failure_ratio:.1%}", f"{s.generator_cpu:.0%}" + (" ⚠ saturated" if s.unreliable else ""),
             "–" if s.server_requests is None else s.server_requests, _server_ms(s),
             ", ".join(f"{k}: {v}" for k, v in s.batches.items()) or "–"]
        )  # fmt: skip
    return rows


def _server_ms(step) -> str:
    """The server's own account of a request's time, from its histograms: queued / model / request path."""
    if not step.server:
        return "–"
    return f"{step.server['queued_ms']:.0f} / {step.server['model_ms']:.0f} / {step.server['request_path_ms']:.0f}"


STEP_HEADERS = ["scenario", "batching", "model", "users", "img/s", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms",
                "max ms", "failures", "generator CPU", "server: answered",
                "server ms: queued / model / request path", "server batches (rows: count)"]  # fmt: skip
CAPACITY_HEADERS = ["in process img/s at these users (served ÷)", "in process ms at these users (p99 ÷)"]


def _step_headers(capacity) -> list[str]:
    if capacity is None:
        return STEP_HEADERS
    at = STEP_HEADERS.index("failures")
    return [*STEP_HEADERS[:at], *CAPACITY_HEADERS, *STEP_HEADERS[at:]]


OPEN_HEADERS = ["scenario", "batching", "offered req/s", "achieved img/s (÷ offered)", "send lag p99 ms",
                "p50 ms", "p90 ms", "p99 ms", "max ms", "failures", "generator CPU",
                "server ms: queued / model / request path", "server batches (rows: count)"]  # fmt: skip


def _open_rows(steps) -> list[list]:
    return [
        [s.scenario, s.batching, f"{s.offered_rate:.1f}",
         f"{s.images_per_second:.1f} ({s.images_per_second / s.offered_rate:.2f}×)", f"{s.lag_p99_ms:.0f}",
         f"{s.p50_ms:.0f}", f"{s.p90_ms:.0f}", f"{s.p99_ms:.0f}", f"{s.max_ms:.0f}", f"{s.failure_ratio:.1%}",
         f"{s.generator_cpu:.0%}" + (" ⚠ saturated" if s.unreliable else ""), _server_ms(s),
         ", ".join(f"{k}: {v}" for k, v in s.batches.items()) or "–"]
        for s in steps
    ]  # fmt: skip


def _open_section(steps) -> list[str]:
    if not steps:
        return ["Not run: give `--rate-fractions` (of the in-process capacity) or `--rates`.", ""]
    return [
        "Requests sent at a rate (Poisson or evenly spaced) by a pool of users, whatever the server does; each "
        "is timed from when it was due, so a server or generator that falls behind shows in the latency. "
        "Achieved below offered means the rate was past what the deployment sustains.",
        "",
        _table(OPEN_HEADERS, _open_rows(steps)),
        "",
    ]


SEARCH_HEADERS = ["scenario", "batching", "p99 objective", "capacity at the objective", "knee (achieved img/s)",
                  "rates probed"]  # fmt: skip
PROBE_HEADERS = ["scenario", "batching", "offered req/s", "answered ÷ due", "achieved img/s", "p50 ms", "p99 ms",
                 "max ms", "send lag p99 ms", "windows", "server ms: queued / model / request path",
                 "server batches (rows: count)", "verdict"]  # fmt: skip


def _search_section(searches, rule) -> list[str]:
    if not searches:
        return ["Not run: give `--search` (needs the SLO file's rate objectives).", ""]
    summary = [[f.scenario, f.batching, f"≤ {f.bound_ms:.0f} ms", f.describe(),
                "–" if f.knee is None else f"{f.knee:.1f}", len(f.probes)] for f in searches]  # fmt: skip
    probes = []
    for f in searches:
        for p in sorted(f.probes, key=lambda p: p.rate):
            s = p.step
            probes.append([f.scenario, f.batching, f"{p.rate:.1f}", f"{s.achieved_share:.1%}",
                           f"{s.images_per_second:.1f}", f"{s.p50_ms:.0f}", f"{s.p99_ms:.0f}", f"{s.max_ms:.0f}",
                           f"{s.lag_p99_ms:.0f}", f"{len(p.windows)}{'' if p.stable else ' (never agreed)'}",
                           _server_ms(s), ", ".join(f"{k}: {v}" for k, v in s.batches.items()) or "–",
                           "pass" if p.ok else "; ".join(p.misses)])  # fmt: skip
    return [
        "Per scenario and batching setting, the highest arrival rate whose p99 stays within the objective with every "
        "due request answered (≥ 99%) and no failures: a sweep in fractions of the in-process best, then bisection "
        f"between the last rate that passed and the first that failed. Each rate runs in windows until {rule.windows} "
        f"consecutive ones agree (answered ÷ due and the median latency within {rule.spread:.0%}; a rate that never "
        f"settles in {rule.max_windows} does not pass); its figures are those windows merged. The knee: "
        "the highest achieved rate before p99 passes twice its value at the lowest rate. The server's own histograms "
        "say where a request's time went: queued for a batch, in the model, in the request path.",
        "",
        _table(SEARCH_HEADERS, summary),
        "",
        _table(PROBE_HEADERS, probes),
        "",
    ]


def _capacity_section(capacity) -> list[str]:
    if capacity is None:
        return ["Not measured: the objectives are absolute (no in-process yardstick).", ""]
    sizes = sorted({b for c in capacity.signatures.values() for b in c.images_per_second})
    rows = [
        [name, f"{cap.batch_1_ms:.1f}", *(f"{cap.images_per_second[b]:.1f}" if b in cap.images_per_second else "–"
                                         for b in sizes)]
        for name, cap in capacity.signatures.items()
    ]  # fmt: skip
    return [
        f"The model measured in process before the load, on this machine, as the server runs it: {capacity.model} "
        f"v{capacity.version} in a TensorFlow Session ({capacity.session}), {capacity.seconds:g} s. "
        f"CPU: {capacity.cpu} (kind: {capacity.kind}). A step's in-process figure at N users is the best batch of at "
        "most N rows, and the time to answer N waiting requests at that rate.",
        "",
        _table(["signature", "batch 1 ms", *(f"img/s, batch {b}" for b in sizes)], rows),
        "",
    ]


def capacity_rows(steps, slo_file, capacity=None) -> list[list]:
    """Per scenario and batching setting: the highest throughput whose p99 stays within the SLO (MLPerf's Server)."""
    rows = []
    for scenario in dict.fromkeys(s.scenario for s in steps):
        own = capacity.of(scenario_signature(scenario)) if capacity is not None else None
        bound = round(slo_file.objective(scenario).p99_bound_ms(own))
        for setting in dict.fromkeys(s.batching for s in steps if s.scenario == scenario):
            within = [s for s in steps if s.scenario == scenario and s.batching == setting
                      and s.p99_ms <= bound and not s.unreliable and s.failures == 0]  # fmt: skip
            best = max(within, key=lambda s: s.images_per_second, default=None)
            found = f"{best.images_per_second:.1f} img/s at {best.concurrency} users" if best else "none"
            rows.append([scenario, setting, f"≤ {bound:g} ms", found])
    return rows


def write(out: Path, machine: dict, steps, comparison, verdicts, args, capacity=None, searches=()) -> list[Path]:
    """Write summary.md, report.html, steps.csv and results.json into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    open_steps = [s for s in steps if s.offered_rate is not None]
    steps = [s for s in steps if s.offered_rate is None]
    png = _plots(steps, capacity, open_steps, searches) if steps or open_steps or searches else b""
    machine_rows = [[k, v] for k, v in machine.items()]
    verdict_rows = [[v.scenario, v.objective, v.wanted, v.measured, "met" if v.ok else "**missed**"] for v in verdicts]
    parts = [
        "# Load test",
        "",
        verdict_text(verdicts).replace("\n", "  \n"),
        "",
        "## Machine and setup",
        "",
        _table(["", ""], machine_rows),
        "",
        f"Each step: all users start at once, {args.warmup:g} s of warm-up are discarded, then {args.seconds:g} s "
        "are measured. One image per request. A step whose load generator used more than 90% of a core is marked "
        "saturated: its figures are the generator's limit, not the server's.",
        "",
        "## The machine's capacity (the yardstick)",
        "",
        *_capacity_section(capacity),
        "## SLO verdict",
        "",
        _table(["where", "objective", "wanted", "measured", ""], verdict_rows),
        "",
        "## Capacity at the p99 objective, open loop",
        "",
        *_search_section(searches, args.rule),
        "## Capacity within the p99 objective, closed loop",
        "",
        _table(
            ["scenario", "batching", "p99 objective", "highest throughput within it"],
            capacity_rows(steps, args.slo_file, capacity),
        ),
        "",
        "## Steps",
        "",
        _table(_step_headers(capacity), _step_rows(steps, capacity)),
        "",
        "## Open loop: latency at an arrival rate",
        "",
        *_open_section(open_steps),
        "## Candidate vs current",
        "",
        _table(_step_headers(capacity), _step_rows(comparison, capacity))
        if comparison
        else "Not run: give `--current` and `--candidate` (two model versions or labels of the same server).",
        "",
        "Plots: `report.html`. Raw figures: `steps.csv`, `results.json`.",
        "",
    ]
    summary = "\n".join(parts)
    paths = [out / "summary.md", out / "report.html", out / "steps.csv", out / "results.json"]
    _atomic(paths[0], summary.encode())
    image = (
        f'<img alt="throughput, latency and batch sizes" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    )
    body = _html(summary).replace("<p>Plots: ", f"{image if png else ''}<p>Plots: ", 1)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>pt2tf load test</title>"
        "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}"
        ".verdict{font-size:1.2em;font-weight:bold}</style></head><body>"
        f"{body}</body></html>"
    )
    _atomic(paths[1], page.encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*COLUMNS, "batches"])
    probed = [p.step for f in searches for p in f.probes]
    for s in [*steps, *open_steps, *probed, *comparison]:
        row = s.to_json()
        writer.writerow([*(row[c] for c in COLUMNS), json.dumps(s.batches)])
    _atomic(paths[2], buffer.getvalue().encode())
    results = {
        "machine": machine,
        "steps": [s.to_json() for s in steps],
        "open_loop": [s.to_json() for s in open_steps],
        "comparison": [s.to_json() for s in comparison],
        "verdicts": [asdict(v) for v in verdicts],
        "capacity": capacity.to_json() if capacity is not None else None,
        "searches": [f.to_json() for f in searches],
    }
    _atomic(paths[3], (json.dumps(results, indent=1) + "\n").encode())
    return paths


def _html(markdown: str) -> str:
    """The summary's own Markdown (headings, tables, paragraphs) as HTML: the page needs nothing else."""
    parts, table = [], []

    def flush_table() -> None:
        if table:
            rows = [[html.escape(c.strip()).replace("**", "") for c in line.strip("|").split("|")] for line in table]
            head = "".join(f"<th>{c}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[2:])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("## "):
            parts.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            parts.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("VERDICT"):
            parts.append(f"<p class='verdict'>{html.escape(line.rstrip())}</p>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line.strip())}</p>")
    flush_table()
    return "\n".join(parts)


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
