"""pt2tf-rollout: a new model version from canary to stable through TF Serving's own version labels, gated by load.

    # against the embedded server, started here on the repository's stable version (make rollout CANDIDATE=N)
    python -m pt2tf_loadtest.rollout --artifacts artifacts/onnx2tf --models models/onnx2tf \\
        --serve-python ~/.cache/pt2tf/envs/onnx2tf-*/bin/python --candidate 3

    # against any TF Serving: its gRPC and REST addresses, and the models.config it polls (rewritten in place)
    python -m pt2tf_loadtest.rollout --artifacts artifacts/onnx2tf --grpc host:8500 --rest http://host:8501 \\
        --config /path/to/models.config --stable 2 --candidate 3 --rate 40

The steps, each printing and logging the ModelServerConfig it applies:

1. load: versions {stable, candidate} served, label `stable` unchanged; wait until the candidate is
   AVAILABLE (TF Serving refuses a label on a version not loaded yet, so the label comes after).
2. label: `canary` → candidate.
3. gate: open-loop load at the production rate, alternating `stable` and `canary` (rounds): the canary
   must answer as the reference does (no failures) and its p50 and p99 stay within the tolerances of
   stable's. A phase that missed only latency ratios is measured again (--remeasure) before it counts.
4. canary: the production rate split between the labels, a share to `canary`, on the client side (TF
   Serving splits nothing: a client names the label per request); errors and p99 watched per label.
5. promote: `stable` → candidate, `canary` removed.
6. retire: after the old version's requests drain, only the candidate is served.

Any failed gate rolls back by itself — versions {stable} with `stable` as it was, the candidate
unloaded — and the run exits 1 naming the gate. How the config is applied: HandleReloadConfigRequest
(gRPC, immediate) and, with --config, the file the server polls, rewritten atomically first: a server
started with --model_config_file_poll_wait_seconds re-reads that file and would otherwise undo a
config given over gRPC. On Kubernetes the file is the ConfigMap's (see README).
"""

from __future__ import annotations

# Locust first: it monkey-patches the standard library for gevent, which must happen before grpc and ssl load.
import locust  # noqa: F401

# isort: split
import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gevent
import grpc
from google.protobuf import text_format
from pt2tf_convert.repository import RepositoryError, served_model, versions
from pt2tf_serve.process import config_copy
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from . import capacity as capacity_mod
from . import slo as slo_mod
from .inputs import load_inputs
from .openloop import Arrivals
from .runner import ManagedServer, Step, measure_capacity, run_step
from .slo import SloError
from .users import TARGET, USERS, LabelSplit

STABLE, CANARY = "stable", "canary"
# A server polls its base path every --file_system_poll_wait_seconds (2 s in server.flags, TF's default 1 s):
# a version it has not even started to load by then is not there.
DISCOVERY_SECONDS = 60


class RolloutError(RuntimeError):
    """A step could not be carried out (a refused config, a version that never became AVAILABLE)."""


@dataclass
class Gate:
    name: str
    wanted: str
    measured: str
    ok: bool


@dataclass
class Record:
    """What the run did: each config applied, each gate, the load steps; written as rollout.json."""

    applied: list[dict] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    remeasured: list[Gate] = field(default_factory=list)  # latency-only misses that a re-measurement replaced
    steps: list[dict] = field(default_factory=list)
    outcome: str = ""


# ---------------------------------------------------------------------------- the model config


def read_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except (OSError, text_format.ParseError) as exc:
        raise RolloutError(f"cannot read the model config {path}: {exc}") from None
    return config


def with_versions(config, model: str, versions: list[int], labels: dict[str, int]):
    """A copy of `config` in which `model` serves exactly `versions`, with exactly `labels`."""
    updated = model_server_config_pb2.ModelServerConfig()
    updated.CopyFrom(config)
    entries = [m for m in updated.model_config_list.config if m.name == model]
    if not entries:
        names = ", ".join(m.name for m in updated.model_config_list.config) or "none"
        raise RolloutError(f"the model config has no model '{model}' (has: {names})")
    entry = entries[0]
    entry.model_version_policy.Clear()
    entry.model_version_policy.specific.versions.extend(sorted(versions))
    entry.version_labels.clear()
    for label, version in labels.items():
        entry.version_labels[label] = version
    return updated


class Applier:
    """Applies a config to a running server: the polled file first (atomically), then HandleReloadConfigRequest."""

    def __init__(self, grpc_target: str, config_path: Path | None, record: Record, dry_run: bool):
        self.config_path, self.record, self.dry_run = config_path, record, dry_run
        self.channel = grpc.insecure_channel(grpc_target)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def apply(self, config, step: str, model: str) -> None:
        text = text_format.MessageToString(config)
        print(f"[{step}] {'would apply' if self.dry_run else 'applying'}:\n    " + text.strip().replace("\n", "\n    "))
        self.record.applied.append({"step": step, "config": text, "at": time.time(), "dry_run": self.dry_run})
        if self.dry_run:
            return
        if self.config_path is not None:
            tmp = self.config_path.with_name(self.config_path.name + ".tmp")
            tmp.write_text(f"# written by pt2tf-rollout, step '{step}'\n{text}")
            tmp.replace(self.config_path)
        try:
            self.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=300)
        except grpc.RpcError as error:
            raise RolloutError(
                f"[{step}] the server refused the config: {error.code().name}: {error.details()}"
            ) from None

    def states(self, model: str) -> dict[int, tuple[str, str]]:
        """version → (state, error message) from GetModelStatus."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        try:
            answer = self.models.GetModelStatus(request, timeout=30)
        except grpc.RpcError as error:
            raise RolloutError(f"GetModelStatus({model}) failed: {error.code().name}: {error.details()}") from None
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: (names(s.state), s.status.error_message) for s in answer.model_version_status}

    def wait_for(self, model: str, version: int, available: bool, timeout: float, step: str) -> None:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            state, error = self.states(model).get(version, ("UNKNOWN", ""))
            if available and state == "AVAILABLE":
                return
            if available and state == "UNKNOWN" and time.monotonic() - started > DISCOVERY_SECONDS:
                raise RolloutError(
                    f"[{step}] version {version} of {model} has not appeared on the server in "
                    f"{DISCOVERY_SECONDS} s: is {version}/ in the model's base path?"
                )
            if available and state == "END" and error:
                raise RolloutError(f"[{step}] version {version} failed to load: {error}")
            if not available and state in ("END", "UNKNOWN"):
                return
            gevent.sleep(0.5)
        wanted = "AVAILABLE" if available else "unloaded"
        raise RolloutError(f"[{step}] version {version} not {wanted} within {timeout:.0f} s")

    def close(self) -> None:
        self.channel.close()


# ---------------------------------------------------------------------------- the gates


@dataclass
class Figures:
    """The requests that named one label in a step: how many, how many failed, their p50 and p99."""

    requests: int = 0
    failures: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0


def _label_figures(step: Step, label: str) -> Figures:
    entries = [v for k, v in step.by_name.items() if k.endswith(f" @{label}")]
    return Figures(
        sum(e["requests"] for e in entries),
        sum(e["failures"] for e in entries),
        max((e["p50_ms"] for e in entries), default=0.0),
        max((e["p99_ms"] for e in entries), default=0.0),
    )


LATENCY_RATIOS = ("p50 ÷ stable p50", "p99 ÷ stable p99")


def judge(name: str, stable: Figures, canary: Figures, tolerance: float, tail_tolerance: float) -> list[Gate]:
    """The canary answers as stable does (no failures), its median within `tolerance` of stable's and its
    p99 within `tail_tolerance` (a p99 of a few hundred requests moves by half on a shared machine)."""
    gates = [
        Gate(f"{name}: canary answered", "> 0 requests", f"{canary.requests}", canary.requests > 0),
        Gate(f"{name}: canary failures", "0", f"{canary.failures} of {canary.requests}", canary.failures == 0),
        Gate(f"{name}: stable failures", "0", f"{stable.failures} of {stable.requests}", stable.failures == 0),
    ]
    if canary.requests and stable.requests:
        for what, bound in (("p50", tolerance), ("p99", tail_tolerance)):
            c, s = getattr(canary, f"{what}_ms"), max(getattr(stable, f"{what}_ms"), 1.0)
            gates.append(Gate(f"{name}: canary {what} ÷ stable {what}", f"≤ {1 + bound:.2f}×",
                              f"{c:.0f} / {s:.0f} ms = {c / s:.2f}×", c / s <= 1 + bound))  # fmt: skip
    return gates


def _load(args, rest_url: str, seconds: float, label: str | None, split: float | None, record: Record) -> Step:
    TARGET.label = label
    TARGET.split = LabelSplit(split, CANARY, STABLE, seed=len(record.steps)) if split is not None else None
    try:
        step = run_step(args.scenario, args.pool, args.warmup, seconds, rest_url, "as served",
                        Arrivals(args.rate, poisson=True, seed=len(record.steps)))  # fmt: skip
    finally:
        TARGET.label, TARGET.split = None, None
    step.label = f"split {split:.0%} canary" if split is not None else label or ""
    record.steps.append(step.to_json())
    print(f"  load {step.label:<18} offered {args.rate:.1f}/s: {step.images_per_second:.1f} img/s, "
          f"p99 {step.p99_ms:.0f} ms, failures {step.failures}/{step.requests}", flush=True)  # fmt: skip
    return step


def gate_phase(args, rest_url: str, record: Record) -> list[Gate]:
    """stable and canary alternately at the production rate, `rounds` times (noise hits both alike)."""
    rounds: dict[str, list[Figures]] = {STABLE: [], CANARY: []}
    for _ in range(args.rounds):
        for label in (STABLE, CANARY):
            rounds[label].append(_label_figures(_load(args, rest_url, args.gate_seconds, label, None, record), label))
    merged = {
        label: Figures(sum(f.requests for f in runs), sum(f.failures for f in runs),
                       sum(f.p50_ms for f in runs) / len(runs), sum(f.p99_ms for f in runs) / len(runs))
        for label, runs in rounds.items()
    }  # fmt: skip
    return judge("gate", merged[STABLE], merged[CANARY], args.tolerance, args.tail_tolerance)


def canary_phase(args, rest_url: str, record: Record) -> list[Gate]:
    step = _load(args, rest_url, args.canary_seconds, None, args.canary_share, record)
    return judge("canary", _label_figures(step, STABLE), _label_figures(step, CANARY), args.tolerance,
                 args.tail_tolerance)  # fmt: skip


def _judged(gates: list[Gate]) -> list[Gate]:
    for gate in gates:
        print(f"  {'met' if gate.ok else 'MISSED'}: {gate.name} {gate.measured} (wanted {gate.wanted})")
    return gates


def measure_phase(measure: Callable[[], list[Gate]], remeasure: int, record: Record) -> list[Gate]:
    """The phase's gates; a measurement whose only misses are latency ratios is taken again, up to `remeasure`
    times. One stall of a shared machine puts one window's p99 (the largest of ~100 requests) far out; a slower
    candidate misses every time. A failed request is never re-measured: a wrong answer is not noise."""
    gates = measure()
    for _ in range(remeasure):
        missed = [g for g in gates if not g.ok]
        if not missed or not all(g.name.endswith(LATENCY_RATIOS) for g in missed):
            break
        print(f"  latency only: measuring the phase again (--remeasure {remeasure})", flush=True)
        record.remeasured += gates
        gates = measure()
    return gates


# ---------------------------------------------------------------------------- the run


def rollout(args, grpc_target: str, rest_url: str, config_path: Path | None, base, record: Record) -> int:
    model, stable, candidate = args.model, args.stable, args.candidate
    TARGET.grpc = grpc_target
    applier = Applier(grpc_target, config_path, record, args.dry_run)
    original = with_versions(base, model, [stable], {STABLE: stable})
    switch_load, promoted = None, False
    try:
        try:
            applier.apply(with_versions(base, model, [stable, candidate], {STABLE: stable}), "load", model)
            if not args.dry_run:
                applier.wait_for(model, candidate, True, args.load_timeout, "load")
            labelled = with_versions(base, model, [stable, candidate], {STABLE: stable, CANARY: candidate})
            applier.apply(labelled, "label", model)
            for phase, run in (("gate", gate_phase), ("canary", canary_phase)):
                if args.dry_run:
                    print(f"[{phase}] would load {args.scenario} at {args.rate:.1f}/s and judge the canary")
                    continue
                gates = measure_phase(lambda run=run: _judged(run(args, rest_url, record)), args.remeasure, record)
                record.gates += gates
                missed = [g for g in gates if not g.ok]
                if missed:
                    raise RolloutError(f"[{phase}] " + "; ".join(f"{g.name} {g.measured}" for g in missed))
            switch_load = None
            if not args.dry_run:  # production traffic on `stable` all through the switch: none of it may fail
                switch_load = gevent.spawn(_load, args, rest_url, args.switch_seconds, STABLE, None, record)
                gevent.sleep(args.warmup + 1.0)
            applier.apply(with_versions(base, model, [stable, candidate], {STABLE: candidate}), "promote", model)
            promoted = True
            if not args.dry_run:
                step = switch_load.get()  # judged while the old version is still loaded, so a rollback can use it
                switch_load = None
                seen = _label_figures(step, STABLE)
                ok = seen.failures == 0 and seen.requests > 0
                gate = Gate("switch: stable failures while the label moved", "0",
                            f"{seen.failures} of {seen.requests}", ok)  # fmt: skip
                record.gates.append(gate)
                print(f"  {'met' if gate.ok else 'MISSED'}: {gate.name} {gate.measured}")
                if not gate.ok:
                    raise RolloutError(f"[switch] {gate.name} {gate.measured}")
                gevent.sleep(args.drain_seconds)  # requests that named the old version by label finish first
            applier.apply(with_versions(base, model, [candidate], {STABLE: candidate}), "retire", model)
            if not args.dry_run:
                applier.wait_for(model, stable, False, args.load_timeout, "retire")
        except RolloutError as exc:
            if switch_load is not None:
                switch_load.kill()
            record.outcome = f"rolled back: {exc}"
            print(f"ROLLOUT FAILED {exc}\n  rolling back: stable stays version {stable}, candidate unloaded")
            if promoted:  # TF Serving checks labels before it loads: the old version must be back before its label
                back = with_versions(base, model, [stable, candidate], {STABLE: candidate})
                applier.apply(back, "rollback: reload the old version", model)
                if not args.dry_run:
                    applier.wait_for(model, stable, True, args.load_timeout, "rollback")
            applier.apply(original, "rollback", model)
            if not args.dry_run:
                applier.wait_for(model, candidate, False, args.load_timeout, "rollback")
            print(f"ROLLED BACK: {exc}")
            return 1
    finally:
        applier.close()
    record.outcome = "dry run" if args.dry_run else f"promoted: stable is version {candidate}"
    print(f"ROLLOUT {'PLANNED (dry run)' if args.dry_run else 'DONE'}: stable → version {candidate}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pt2tf-rollout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, required=True, help="the export's output: inputs and answers")
    parser.add_argument("--candidate", type=int, required=True, help="the model version to roll out")
    parser.add_argument("--stable", type=int, help="the version serving now (default: the config's `stable` "
                        "label, or the newest version below the candidate)")  # fmt: skip
    parser.add_argument("--model", help="the served model (default: the export's, named in its export.json)")
    where = parser.add_argument_group("the server")
    where.add_argument("--grpc", help="gRPC HOST:PORT of a running TF Serving")
    where.add_argument("--rest", help="its REST base URL")
    where.add_argument("--config", type=Path, help="the models.config that server polls (rewritten at each step)")
    where.add_argument("--models", type=Path, help="model repository: start the embedded server on it")
    where.add_argument("--serve-python", type=Path, help="the lane env's python (embedded server, capacity)")
    load = parser.add_argument_group("the load that gates it")
    load.add_argument("--rate", type=float, help="the production rate, requests/s")
    load.add_argument("--rate-fraction", type=float,
                      help="without --rate: this fraction of the in-process capacity (default: the SLO file's "
                      "production rate for the scenario)")  # fmt: skip
    load.add_argument("--slo", type=Path, default=Path(__file__).resolve().parents[1] / "slo.toml",
                      help="whose production rate (rate or rate_share_of_capacity) the gate runs at, when neither "
                      "--rate nor --rate-fraction is given (default: %(default)s)")  # fmt: skip
    load.add_argument("--scenario", default="grpc-tensor", choices=sorted(USERS))
    load.add_argument("--canary-share", type=float, default=0.2, help="share of traffic to canary (default 0.2)")
    load.add_argument("--gate-seconds", type=float, default=8.0)
    load.add_argument("--canary-seconds", type=float, default=12.0)
    load.add_argument("--rounds", type=int, default=2, help="alternations of stable and canary in the gate")
    load.add_argument("--tolerance", type=float, default=0.5,
                      help="canary p50 may be this much above stable's (default 0.5)")  # fmt: skip
    load.add_argument("--tail-tolerance", type=float, default=1.5,
                      help="canary p99 may be this much above stable's (default 1.5: a p99 of a few hundred "
                      "requests is noisy on a shared machine)")  # fmt: skip
    load.add_argument("--remeasure", type=int, default=1,
                      help="times a phase that missed only latency ratios is measured again; it passes if a "
                      "re-measurement meets every gate (default 1; 0: the first measurement decides)")  # fmt: skip
    load.add_argument("--warmup", type=float, default=1.0)
    load.add_argument("--pool", type=int, default=64)
    parser.add_argument("--drain-seconds", type=float, default=2.0)
    parser.add_argument("--switch-seconds", type=float, default=8.0,
                        help="load on `stable` measured while it moves to the candidate")  # fmt: skip
    parser.add_argument("--load-timeout", type=float, default=300.0)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and each config; change nothing")
    parser.add_argument("--out", type=Path, default=Path("reports/rollout"), help="rollout.json goes here")
    args = parser.parse_args(argv)

    managed = args.models is not None and not args.grpc
    if not managed and not (args.grpc and args.rest):
        parser.error("give --grpc and --rest (a running server), or --models and --serve-python (the embedded one)")
    if managed and not args.serve_python:
        parser.error("the embedded server needs --serve-python (the lane env's python)")
    if not 0 <= args.canary_share <= 1:
        parser.error("--canary-share is between 0 and 1")
    if args.remeasure < 0:
        parser.error(f"--remeasure is a count of re-measurements, 0 or more (got {args.remeasure})")
    try:
        TARGET.model = args.model = args.model or served_model(args.artifacts, args.models)
    except RepositoryError as exc:
        parser.error(str(exc))
    TARGET.inputs = load_inputs(args.artifacts)
    record = Record()
    folder = Path(tempfile.mkdtemp(prefix="pt2tf-rollout-"))
    found = versions(args.models / args.model) if args.models is not None else []
    try:
        if args.stable is None:
            args.stable = _stable_version(args, managed, found)
        if args.stable == args.candidate:
            parser.error(f"the candidate is version {args.candidate}, which is already stable")
        missing = [v for v in (args.stable, args.candidate) if v not in found]
        if missing and managed:
            parser.error(f"version {missing[0]} is not in {args.models / args.model} (it has {found})")
        if args.rate is None and args.rate_fraction is None:
            # The rate the load test's open-loop objectives name: a rollout is gated where the gate is judged.
            objective = slo_mod.load(args.slo, [args.scenario]).objective(args.scenario)
            if not objective.open_loop:
                parser.error(f"{args.slo} states no production rate for {args.scenario}: give --rate or "
                             "--rate-fraction")  # fmt: skip
            args.rate, args.rate_fraction = objective.rate, objective.rate_share_of_capacity
        if args.rate is None:
            if not (args.models and args.serve_python):
                parser.error("give --rate, or --models and --serve-python to measure the capacity it is a share of")
            measured = measure_capacity(args.serve_python, args.artifacts, args.models / args.model,
                                        folder / "capacity.json", version=args.stable)  # fmt: skip
            best = measured.of(capacity_mod.scenario_signature(args.scenario)).best
            args.rate = round(args.rate_fraction * best, 1)
            print(f"production rate: {args.rate_fraction:g} × in-process best {best:.1f} img/s = {args.rate}/s")
        if managed:
            return _managed(args, folder, record)
        if not args.config:
            # TF Serving has no call that returns its model config, and a reload replaces all of it.
            parser.error("against a running server give --config, the models.config it serves (and polls)")
        base = read_config(args.config)
        return rollout(args, args.grpc, args.rest.rstrip("/"), args.config, base, record)
    except (RolloutError, capacity_mod.CapacityError, SloError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        record.outcome = f"error: {exc}"
        return 2
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        tmp = args.out / "rollout.json.tmp"
        tmp.write_text(json.dumps(asdict(record), indent=1, default=str) + "\n")
        tmp.replace(args.out / "rollout.json")
        shutil.rmtree(folder, ignore_errors=True)


def _stable_version(args, managed: bool, found: list[int]) -> int:
    """The config's `stable` label (a running server), else the newest repository version below the candidate."""
    if args.config and not managed:
        for entry in read_config(args.config).model_config_list.config:
            if entry.name == args.model and STABLE in entry.version_labels:
                return entry.version_labels[STABLE]
    below = [v for v in found if v < args.candidate]
    if below:
        return below[-1]
    raise RolloutError("give --stable: no `stable` label in the config, and no version below the candidate")


def _managed(args, folder: Path, record: Record) -> int:
    """The embedded server on the repository, serving `stable` only, with the config the rollout rewrites."""
    config = config_copy(folder / "config", model=args.model)
    models_config = config / "models.config"
    base = read_config(models_config)
    models_config.write_text(text_format.MessageToString(with_versions(base, args.model, [args.stable],
                                                                       {STABLE: args.stable})))  # fmt: skip
    extra = ["--allow_version_labels_for_unavailable_models=true"]
    with ManagedServer(args.serve_python, args.models, True, None, extra, config=config) as server:
        print(f"embedded server: REST {server.rest_url}, gRPC {server.grpc_target}, version {args.stable} stable")
        return rollout(args, server.grpc_target, server.rest_url, models_config, base, record)


if __name__ == "__main__":
    sys.exit(main())
