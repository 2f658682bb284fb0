"""Sessions for every stage, per lane. `nox -l` is the table of contents.

Each stage runs in an environment built from toolchain.lock and cached outside the clone
(see toolchain/pt2tf_toolchain/envs.py), so nox itself creates no virtualenvs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
for _folder in ("toolchain", "serve", "convert"):  # their standard-library-only modules, imported below
    sys.path.insert(0, str(ROOT / _folder))

from pt2tf_convert.bench_table import lever_plan  # noqa: E402
from pt2tf_convert.repository import RepositoryError, served_model, versions  # noqa: E402
from pt2tf_serve.cpu import cpu_info  # noqa: E402
from pt2tf_serve.process import DOCKER_CONFIG, embedded_flags, read_env_file, server_env  # noqa: E402
from pt2tf_toolchain.envs import ensure_env, installed_packages  # noqa: E402
from pt2tf_toolchain.lock import drift, load_lock, staleness  # noqa: E402
from pt2tf_toolchain.matrix import Lane, load_matrix  # noqa: E402

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True

MATRIX = load_matrix()
ARTIFACTS = ROOT / "artifacts"
MODELS = ROOT / "models"
REPORTS = ROOT / "reports"
MODEL_NAME = "resnet18"
# The second architecture every lane's suites take through export, convert, verify and serving: its operators differ
# from ResNet18's (HardSwish, HardSigmoid in squeeze-excitation blocks, depthwise convolutions) and it is cheap.
TEST_ARCHITECTURE = "mobilenet_v3_small"
PLATFORM_CONFIG = DOCKER_CONFIG / "platform.config"  # the session config TF Serving would run the models with
BF16_MODEL = f"{MODEL_NAME}-bf16"
# The project's packages, importable in every env without installing them into the shared cache.
PYTHONPATH = os.pathsep.join(str(ROOT / folder) for folder in ("convert", "serve", "loadtest", "toolchain"))


def env_python(session: nox.Session, env: str) -> str:
    """The interpreter of a locked env, built first if the cache lacks it; refuses a stale lock."""
    lock = load_lock()
    problems = staleness(MATRIX, lock)
    if problems:
        session.error("toolchain.lock is stale:\n  " + "\n  ".join(problems))
    path = ensure_env(lock, env)
    drifted = drift(lock.env(env), installed_packages(path), f"env '{env}' ({path})")
    if drifted:
        session.error(
            "an installed env drifted from toolchain.lock (changed by hand?):\n  "
            + "\n  ".join(drifted)
            + f"\nremove {path} and run again to rebuild it from the lock"
        )
    return str(path / "bin" / "python")


def run_in(session: nox.Session, env: str, *args: str) -> None:
    """Run `python *args` in a locked env, with the project's packages importable."""
    quiet_tf = {"TF_CPP_MIN_LOG_LEVEL": "2"}  # TensorFlow's C++ info and warnings bury the progress lines
    # The caller's PYTHONPATH after the project's: where a user's own model (--model package.module:factory) lives.
    pythonpath = os.pathsep.join(filter(None, (PYTHONPATH, os.environ.get("PYTHONPATH"))))
    env_vars = {**session.env, "PYTHONPATH": pythonpath, **quiet_tf}
    session.run(env_python(session, env), *args, env=env_vars, external=True)


def _run_here(session: nox.Session, module: str, *args: str) -> None:
    """Run a standard-library-only module of the project in the tools env nox itself runs in."""
    session.run(sys.executable, "-m", module, *args, env={"PYTHONPATH": PYTHONPATH})


@nox.session(python=False)
def lock(session: nox.Session) -> None:
    """Resolve toolchain.toml against PyPI and rewrite toolchain.lock with sha256 hashes."""
    _run_here(session, "pt2tf_toolchain", "lock")


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """Check style with ruff (lint rules and formatting)."""
    session.run(sys.executable, "-m", "ruff", "check", ".")
    session.run(sys.executable, "-m", "ruff", "format", "--check", ".")


# Each suite runs in the env whose packages it imports; convert-<lane> runs in that lane's env.
LANE_SUITES = ("convert", "serve")
TEST_SUITES = (
    {"toolchain": "tools", "export": "export"}
    | {f"{kind}-{lane.name}": lane.env_for(kind) for lane in MATRIX.lanes.values() for kind in LANE_SUITES}
    | {"loadtest": MATRIX.lane(None).env_for("loadtest")}
    | {"checks": "checks"}  # the deployment files: workflow, Dockerfile, compose, Kubernetes (tests/checks)
)


@nox.session(python=False)
@nox.parametrize("suite", list(TEST_SUITES), ids=list(TEST_SUITES))
def tests(session: nox.Session, suite: str) -> None:
    """Run one test suite in its locked env (convert and serve suites first export their lane afresh)."""
    env = TEST_SUITES[suite]
    if env == "tools":
        session.run(sys.executable, "-m", "pytest", f"tests/{suite}", *session.posargs)
        return
    if suite == "loadtest":
        _loadtest_suite(session, env)
        return
    kind, _, lane_name = suite.partition("-")
    if kind not in LANE_SUITES:
        run_in(session, env, "-m", "pytest", f"tests/{suite}", *session.posargs)
        return
    lane = MATRIX.lane(lane_name)
    artifacts = _fresh_export(session, lane)
    session.env.update({"PT2TF_LANE": lane.name, "PT2TF_TEST_ARTIFACTS": str(artifacts)})
    session.env["PT2TF_TEST_ARCHITECTURE_ARTIFACTS"] = str(_fresh_export(session, lane, TEST_ARCHITECTURE))
    session.env["PT2TF_TEST_MODELS"] = str(_fresh_convert(session, lane))
    session.env["PT2TF_TEST_ARCHITECTURE_MODELS"] = str(_fresh_convert(session, lane, TEST_ARCHITECTURE))
    # tests/serve/test_user_model.py exports a user's module itself, in the export env
    session.env["PT2TF_EXPORT_PYTHON"] = env_python(session, lane.env_for("export"))
    run_in(session, env, "-m", "pytest", f"tests/{kind}", *session.posargs)


_FRESH_EXPORTS: dict[tuple[str, str, int, str], tuple[str, Path]] = {}


def _fresh_export(session: nox.Session, lane: Lane, model: str = MODEL_NAME) -> Path:
    """The lane's export of `model` made afresh in this nox run, shared by its suites (they only read it): one
    export per lane and run instead of one per suite saves minutes on the slowest CPU. Lanes that export alike (the
    same export env, exporter and opset: `onnx2tf` and `latest`) share one; its export.json names the lane that made
    it, which nothing reads but the record. Removed when nox exits."""
    key = (lane.env_for("export"), lane.exporter, lane.opset, model)
    if key in _FRESH_EXPORTS:
        maker, artifacts = _FRESH_EXPORTS[key]
        alike = (
            ""
            if maker == lane.name
            else f" (lane {maker}'s: the same export env, {lane.exporter} exporter, opset {lane.opset})"
        )
        session.log(f"lane {lane.name}: this run's fresh export of {model}{alike} {artifacts}")
        return artifacts
    root = Path(tempfile.mkdtemp(prefix=f"pt2tf-test-{lane.name}-{model}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    _export(session, lane, out=root / "artifacts", model=model)
    _FRESH_EXPORTS[key] = (lane.name, root / "artifacts")
    return root / "artifacts"


_FRESH_CONVERSIONS: dict[tuple[str, str], Path] = {}


def _fresh_convert(session: nox.Session, lane: Lane, model: str = MODEL_NAME, artifacts: Path | None = None) -> Path:
    """A repository holding `artifacts` (default: the lane's fresh export of `model`) converted in this nox run
    (version 1), shared by the lane's convert and serve suites and the load-test suite, which only read it (a test
    that changes a version copies it first): one conversion per lane, export and run instead of one per suite.
    Removed when nox exits."""
    artifacts = artifacts or _fresh_export(session, lane, model)
    key = (lane.name, str(artifacts))
    if key in _FRESH_CONVERSIONS:
        session.log(f"lane {lane.name}: this run's conversion of {artifacts} {_FRESH_CONVERSIONS[key]}")
        return _FRESH_CONVERSIONS[key]
    root = Path(tempfile.mkdtemp(prefix=f"pt2tf-test-{lane.name}-models-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    _convert(session, lane, artifacts, root)
    _FRESH_CONVERSIONS[key] = root
    return root


def _loadtest_suite(session: nox.Session, env: str) -> None:
    """The load test's machinery end to end: the default lane exported and converted afresh, served embedded."""
    lane = MATRIX.lane(None)
    session.env.update(
        {
            "PT2TF_LANE": lane.name,
            "PT2TF_TEST_ARTIFACTS": str(_fresh_export(session, lane)),
            "PT2TF_TEST_MODELS": str(_fresh_convert(session, lane)),
            "PT2TF_SERVE_PYTHON": env_python(session, lane.env_for("serve")),
        }
    )
    run_in(session, env, "-m", "pytest", "tests/loadtest", *session.posargs)


def _model_args(lane: str) -> list[str]:
    return ["--models", str(MODELS / lane), "--model-name", MODEL_NAME]


def _lane_paths(lane: str) -> list[str]:
    return ["--artifacts", str(ARTIFACTS / lane), *_model_args(lane)]


def _export(session: nox.Session, lane: Lane, out: Path | None = None, model: str | None = None) -> None:
    """Export `lane` into `out` (default artifacts/<lane>; posargs, e.g. --model, go to the exporter only then)."""
    args = session.posargs if out is None else ["--model", model or MODEL_NAME]
    cmd = ["--lane", lane.name, "--exporter", lane.exporter, "--opset", str(lane.opset)]
    run_in(session, lane.env_for("export"), "-m", "pt2tf_convert.export", *cmd,
           "--out", str(out or ARTIFACTS / lane.name), *args)  # fmt: skip


def _convert(session: nox.Session, lane: Lane, artifacts: Path | None = None, models: Path | None = None) -> None:
    """Convert `lane` (default: artifacts/<lane> → models/<lane>/<the exported model>; posargs go to the converter
    only then)."""
    args = session.posargs if artifacts is None else []
    paths = ["--artifacts", str(artifacts or ARTIFACTS / lane.name), "--models", str(models or MODELS / lane.name)]
    cmd = ["-m", "pt2tf_convert.convert", "--lane", lane.name, "--converter", lane.converter]
    run_in(session, lane.env_for("convert"), *cmd, *paths, *args)


def _verify(session: nox.Session, lane: Lane) -> None:
    run_in(
        session,
        lane.env_for("verify"),
        "-m",
        "pt2tf_convert.verify",
        "--lane",
        lane.name,
        *["--artifacts", str(ARTIFACTS / lane.name), "--models", str(MODELS / lane.name)],  # the exported model
        *["--reports", str(REPORTS / lane.name)],
        *session.posargs,
    )


def _served_model(session: nox.Session, lane: Lane) -> str:
    """The lane's model for serving and load: `-- --model NAME`, else the one its export holds (export.json), else
    the only one in its repository."""
    posargs = list(session.posargs)
    given = [posargs[i + 1] for i, arg in enumerate(posargs[:-1]) if arg == "--model"]
    given += [arg.removeprefix("--model=") for arg in posargs if arg.startswith("--model=")]
    try:
        return given[-1] if given else served_model(ARTIFACTS / lane.name, MODELS / lane.name)
    except RepositoryError as exc:
        session.error(str(exc))


def _require_model(session: nox.Session, lane: Lane, model: str | None = None) -> str:
    """The lane's served model (default: `_served_model`), refused when it has no converted version."""
    model = model or _served_model(session, lane)
    if not versions(MODELS / lane.name / model):
        session.error(
            f"lane {lane.name} has no converted {model} in {MODELS / lane.name}: run nox -s convert-{lane.name}"
        )
    return model


def _server_env(session: nox.Session, file_env: dict[str, str] | None = None) -> None:
    """Give the session the server's environment, docker/config/server.env (or `file_env`); a variable set in the
    shell wins, as the embedded server's launchers do. TensorFlow measured in process then runs the kernels the
    served model runs (TF_ENABLE_ONEDNN_OPTS: see README "CPU kinds")."""
    file_env = read_env_file(DOCKER_CONFIG / "server.env") if file_env is None else file_env
    session.env.update({name: value for name, value in file_env.items() if name not in os.environ})


def _serve(session: nox.Session, lane: Lane) -> None:
    """Serve in the foreground until Ctrl-C; posargs after `--` are more tensorflow_model_server flags."""
    _require_model(session, lane, MODEL_NAME)  # docker/config and this session serve or measure resnet18
    session.log(f"embedded server (pt2tf-serve) on lane {lane.name}, standing in for {lane.serving_image}")
    flags = embedded_flags(DOCKER_CONFIG, MODELS / lane.name, *session.posargs)  # docker/config/server.flags
    _server_env(session, server_env(flags, {}))
    run_in(session, lane.env_for("serve"), "-m", "pt2tf_serve.server", *flags)


def _conformance(session: nox.Session, lane: Lane) -> None:
    """The conformance suite on this lane's export: against PT2TF_CONFORMANCE_REST/_GRPC when set, else embedded."""
    artifacts = ARTIFACTS / lane.name
    if not (artifacts / "model.onnx").is_file():
        session.error(f"lane {lane.name} has no export in {artifacts}: run nox -s export-{lane.name}")
    session.env.update({"PT2TF_LANE": lane.name, "PT2TF_TEST_ARTIFACTS": str(artifacts)})
    if not os.environ.get("PT2TF_CONFORMANCE_MODELS"):  # the embedded server, on this export converted now
        session.env["PT2TF_TEST_MODELS"] = str(_fresh_convert(session, lane, artifacts=artifacts))
    run_in(session, lane.env_for("serve"), "-m", "pytest", "tests/serve/test_conformance.py", *session.posargs)


STAGES = {
    "export": (_export, "Export ResNet18 (or -- --model NAME | package.module:factory) to ONNX + PyTorch reference"),
    "convert": (_convert, "Convert the ONNX export to a TF Serving model version"),
    "verify": (_verify, "Verify the SavedModel against PyTorch and ONNX Runtime"),
    "serve": (_serve, "Serve the model repository with the embedded TF-Serving-compatible server"),
    "conformance": (_conformance, "Run the conformance suite against a running TF Serving (the real image in CI)"),
}
# Stages that finish by themselves; `serve` runs until stopped, so it is not part of `nox -t matrix`
# (nor is `conformance`, which checks a server CI started).
BATCH_STAGES = ("export", "convert", "verify")


def _describe(lane: Lane) -> str:
    return f"{lane.exporter} exporter, opset {lane.opset}, {lane.converter}"


def _register_lane_sessions() -> None:
    """`<stage>` runs the default lane; `<stage>-<lane>` runs one lane and carries the tag 'matrix'."""
    default = MATRIX.lane(None)
    for stage, (run, summary) in STAGES.items():

        def default_session(session: nox.Session, run=run) -> None:
            run(session, default)

        default_session.__doc__ = f"{summary}, default lane ({default.name})."
        nox.session(python=False, name=stage)(default_session)

        for lane in MATRIX.lanes.values():

            def lane_session(session: nox.Session, run=run, lane=lane) -> None:
                run(session, lane)

            lane_session.__doc__ = f"{summary}, lane {lane.name} ({_describe(lane)})."
            tags = ["matrix"] if stage in BATCH_STAGES else []
            nox.session(python=False, name=f"{stage}-{lane.name}", tags=tags)(lane_session)


_register_lane_sessions()


def _bench(session: nox.Session, env: str, out: Path, runtime: str, *args: str) -> None:
    default = MATRIX.lane(None)
    cmd = ["-m", "pt2tf_convert.bench", "--runtime", runtime, "--artifacts", str(ARTIFACTS / default.name)]
    run_in(session, env, *cmd, "--out", str(out), *args, *session.posargs)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Bench PyTorch, ONNX Runtime and every converted lane in one run (reports/bench.md)."""
    out = REPORTS / "bench"
    shutil.rmtree(out, ignore_errors=True)
    _server_env(session)  # the Session path as TF Serving runs it, with server.env's kernels
    torch_env = MATRIX.lane(None).env_for("export")
    for runtime in ("onnxruntime", "pytorch"):
        _bench(session, torch_env, out / f"{runtime}.json", runtime)
    for index, lane in enumerate(MATRIX.lanes.values()):
        if not (MODELS / lane.name / MODEL_NAME).is_dir():
            session.warn(f"lane {lane.name}: no converted model, skipped — run nox -s convert-{lane.name}")
            continue
        args = [*_model_args(lane.name), "--label", f"lane {lane.name}", "--platform-config", str(PLATFORM_CONFIG)]
        _bench(session, lane.env_for("bench"), out / f"savedmodel-{index}-{lane.name}.json", "savedmodel", *args)
    default = MATRIX.lane(None)
    if versions(MODELS / default.name / BF16_MODEL) and cpu_info().bf16:  # published by nox -s bf16
        args = [
            "--models",
            str(MODELS / default.name),
            "--model-name",
            BF16_MODEL,
            "--label",
            f"lane {default.name} bf16",
        ]
        args += ["--platform-config", str(DOCKER_CONFIG / "platform-bf16.config"), "--no-images"]
        _bench(session, default.env_for("bench"), out / f"savedmodel-9-{default.name}-bf16.json", "savedmodel", *args)
    _run_here(session, "pt2tf_convert.bench_table", str(out))


@nox.session(python=False, name="bench-levers")
def bench_levers(session: nox.Session) -> None:
    """Bench the default lane's serving_default under each performance lever (reports/bench-levers.md).

    LEVERS="default onednn-on" runs some; REPEATS=3 runs each lever's process three times, alternating, and the
    report says which lever, if any, beats the default beyond the spread of its processes."""
    variants = ("default", "inter-op-1", "intra-op-1", "onednn-on", "no-onednn", "eigen-contraction", "xla", "bf16")
    try:
        plan = lever_plan(os.environ.get("LEVERS"), os.environ.get("REPEATS"), variants)
    except ValueError as error:
        session.error(str(error))
    cpu = cpu_info()
    if not cpu.bf16 and any(variant == "bf16" for _, variant in plan):
        session.log(f"bf16 lever skipped: {cpu.describe()} has no native bf16")
        plan = [(stem, variant) for stem, variant in plan if variant != "bf16"]
    if not plan:
        session.error("LEVERS: nothing left to measure on this CPU")
    out = REPORTS / "bench-levers"
    shutil.rmtree(out, ignore_errors=True)
    lane = MATRIX.lane(None)
    _bench(session, lane.env_for("export"), out / "onnxruntime.json", "onnxruntime")
    # The oneDNN levers set their own TF_ENABLE_ONEDNN_OPTS / TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL;
    # the others run with TensorFlow's default for this CPU, whatever the caller's shell sets.
    for name in ("TF_ENABLE_ONEDNN_OPTS", "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL"):
        session.env[name] = None
    for stem, variant in plan:
        args = [*_model_args(lane.name), "--label", f"lane {lane.name}", "--variant", variant, "--no-images"]
        args += ["--platform-config", str(PLATFORM_CONFIG)]
        _bench(session, lane.env_for("bench"), out / f"{stem}.json", "savedmodel", *args)
    _run_here(session, "pt2tf_convert.bench_table", str(out))


@nox.session(python=False)
def bf16(session: nox.Session) -> None:
    """Publish the default lane's bf16 variant (models/<lane>/resnet18-bf16) and check its parity; bf16 CPUs only."""
    lane = MATRIX.lane(None)
    cmd = ["-m", "pt2tf_convert.convert", "--lane", lane.name, "--converter", lane.converter, "--bf16"]
    run_in(session, lane.env_for("convert"), *cmd, *_lane_paths(lane.name), *session.posargs)
    run_in(session, lane.env_for("verify"), "-m", "pt2tf_convert.bf16", "--lane", lane.name,
           "--artifacts", str(ARTIFACTS / lane.name), "--models", str(MODELS / lane.name),
           "--model-name", BF16_MODEL, "--reports", str(REPORTS / lane.name))  # fmt: skip


@nox.session(python=False)
def profile(session: nox.Session) -> None:
    """Per-layer time of ONNX Runtime vs the default lane's Session, converter graph vs optimized (reports/profile/)."""
    lane = MATRIX.lane(None)
    _require_model(session, lane, MODEL_NAME)  # docker/config and this session serve or measure resnet18
    out = REPORTS / "profile"
    shutil.rmtree(out, ignore_errors=True)
    _server_env(session)  # as served; TF_ENABLE_ONEDNN_OPTS=0|1 in the shell profiles the other kernels
    common = ["-m", "pt2tf_convert.profile", "--artifacts", str(ARTIFACTS / lane.name), *session.posargs]
    run_in(session, lane.env_for("export"), *common, "--runtime", "onnxruntime", "--out", str(out / "onnxruntime.json"))
    tf_args = ["--runtime", "savedmodel", "--platform-config", str(PLATFORM_CONFIG), "--model-name", MODEL_NAME]
    with tempfile.TemporaryDirectory(prefix="pt2tf-profile-") as tmp:
        # The converter's graph as it was before pt2tf_convert.optimize, for the comparison.
        run_in(session, lane.env_for("convert"), "-m", "pt2tf_convert.convert", "--lane", lane.name,
               "--converter", lane.converter, "--artifacts", str(ARTIFACTS / lane.name), "--models", tmp,
               "--no-optimize")  # fmt: skip
        label = f"lane {lane.name}, converter's graph"
        run_in(session, lane.env_for("bench"), *common, *tf_args, "--models", tmp,
               "--label", label, "--out", str(out / "savedmodel-1-converter.json"))  # fmt: skip
    run_in(session, lane.env_for("bench"), *common, *tf_args, "--models", str(MODELS / lane.name),
           "--label", f"lane {lane.name}, published", "--out", str(out / "savedmodel-2-published.json"))  # fmt: skip
    _run_here(session, "pt2tf_convert.profile_table", str(out))


@nox.session(python=False)
def client(session: nox.Session) -> None:
    """pt2tf-client in the default lane's env: nox -s client -- --rest http://127.0.0.1:8501 classify photo.jpg."""
    run_in(session, MATRIX.lane(None).env_for("serve"), "-m", "pt2tf_serve.client", *session.posargs)


@nox.session(python=False, name="serve-check")
def serve_check(session: nox.Session) -> None:
    """Serve the default lane's model, classify the photos over REST and gRPC, compare with in-process TF."""
    lane = MATRIX.lane(None)
    args = ["--models", str(MODELS / lane.name), "--artifacts", str(ARTIFACTS / lane.name)]
    run_in(session, lane.env_for("serve"), "-m", "pt2tf_serve.check", *args)


@nox.session(python=False, name="serve-bench")
def serve_bench(session: nox.Session) -> None:
    """Served vs in-process throughput, batching on vs off, REST vs gRPC, default lane (reports/serve-bench.md)."""
    lane = MATRIX.lane(None)
    _require_model(session, lane, MODEL_NAME)  # docker/config and this session serve or measure resnet18
    args = ["--models", str(MODELS / lane.name), "--artifacts", str(ARTIFACTS / lane.name)]
    _server_env(session)  # its in-process figures run the kernels its servers run
    run_in(session, lane.env_for("serve"), "-m", "pt2tf_serve.bench", *args, "--out", str(REPORTS / "serve-bench.md"),
           *session.posargs)  # fmt: skip


@nox.session(python=False, name="serve-overload")
def serve_overload(session: nox.Session) -> None:
    """How fast 10× and 100× overload is refused over gRPC and REST, default lane (reports/serve-overload.md)."""
    lane = MATRIX.lane(None)
    _require_model(session, lane, MODEL_NAME)  # docker/config and this session serve or measure resnet18
    args = ["--models", str(MODELS / lane.name), "--artifacts", str(ARTIFACTS / lane.name)]
    out = ["--out", str(REPORTS / "serve-overload.md")]
    run_in(session, lane.env_for("serve"), "-m", "pt2tf_serve.overload", *args, *out, *session.posargs)


@nox.session(python=False)
def loadtest(session: nox.Session) -> None:
    """Locust sweep over concurrency, batching off and on, SLO gate, report (reports/loadtest/); lane: $PT2TF_LANE."""
    lane = MATRIX.lane(os.environ.get("PT2TF_LANE") or None)
    model = _served_model(session, lane)
    args = ["--artifacts", str(ARTIFACTS / lane.name), "--out", str(REPORTS / "loadtest"), "--lane", lane.name]
    args += ["--model", model]
    external = any(arg.startswith("--rest") for arg in session.posargs)
    if not external:  # no external server: start the embedded one
        _require_model(session, lane, model)
    if versions(MODELS / lane.name / model):
        # The embedded server's repository; against an external server, what the in-process capacity is measured on.
        serve_python = env_python(session, lane.env_for("serve"))
        args += ["--models", str(MODELS / lane.name), "--serve-python", serve_python]
    if not external:
        args += _candidate_args(MODELS / lane.name / model)
    run_in(session, lane.env_for("loadtest"), "-m", "pt2tf_loadtest.runner", *args, *session.posargs)


@nox.session(python=False)
def rollout(session: nox.Session) -> None:
    """Roll a model version out through TF Serving's labels, gated by load (pt2tf-rollout); lane: $PT2TF_LANE."""
    lane = MATRIX.lane(os.environ.get("PT2TF_LANE") or None)
    model = _served_model(session, lane)
    args = ["--artifacts", str(ARTIFACTS / lane.name), "--out", str(REPORTS / "rollout"), "--model", model]
    if versions(MODELS / lane.name / model):  # the embedded server's repository, and the capacity's model
        args += ["--models", str(MODELS / lane.name), "--serve-python", env_python(session, lane.env_for("serve"))]
    run_in(session, lane.env_for("loadtest"), "-m", "pt2tf_loadtest.rollout", *args, *session.posargs)


def _candidate_args(model_dir: Path) -> list[str]:
    """The newest version as the candidate against the one before it, when the repository holds two."""
    found = versions(model_dir)
    return ["--current", str(found[-2]), "--candidate", str(found[-1])] if len(found) >= 2 else []


# The architectures `nox -s models` takes through every lane (issue 19): convolutional families, depthwise and
# squeeze-excitation blocks, dense connections, LayerNorm/GELU transformers with attention.
MATRIX_MODELS = (
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "convnext_tiny",
    "densenet121",
    "swin_t",
)


@nox.session(python=False)
def models(session: nox.Session) -> None:
    """Each architecture on every lane: parity, transposes, Session ÷ ORT and served speed (reports/models.md, .html);
    -- NAME... picks, --no-speed skips the speed."""
    lanes = []
    for lane in MATRIX.lanes.values():
        if len({lane.env_for(stage) for stage in ("convert", "verify", "bench", "serve")}) != 1:
            session.error(f"lane {lane.name}: model_matrix runs convert, verify, bench and serve in one env; "
                          "toolchain.toml gives it several — give model_matrix a python per stage first")  # fmt: skip
        pythons = [env_python(session, lane.env_for(stage)) for stage in ("export", "convert")]
        lanes += ["--lane", ":".join([lane.name, lane.exporter, str(lane.opset), lane.converter, *pythons])]
    options = [arg for arg in session.posargs if arg.startswith("-")]
    names = [arg for arg in session.posargs if not arg.startswith("-")] or list(MATRIX_MODELS)
    chart_python = env_python(session, MATRIX.lane(None).env_for("verify"))  # any lane's env has matplotlib
    _server_env(session)  # the speed stages' Session runs the kernels their served_rate servers run
    _run_here(session, "pt2tf_convert.model_matrix", "--out", str(REPORTS / "models"), *lanes, "--models", *names,
              "--cpu", cpu_info().describe(), "--platform-config", str(PLATFORM_CONFIG), "--chart-python",
              chart_python, *options)  # fmt: skip


@nox.session(python=False, name="matrix-table", tags=["matrix"])
def matrix_table(session: nox.Session) -> None:
    """Print every lane's parity report side by side (reports/matrix.md)."""
    _run_here(session, "pt2tf_convert.matrix_table", str(REPORTS))
