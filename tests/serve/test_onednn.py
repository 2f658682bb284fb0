"""oneDNN on or off per CPU kind, as TensorFlow decides it, and the served path's way to choose it.

TensorFlow turns oneDNN on by default only on CPUs with VNNI, AVX512-BF16 or AMX (port.cc's
DefaultOneDnnPolicy); TF_ENABLE_ONEDNN_OPTS overrides it. pt2tf_serve.cpu mirrors that rule so that
the bench, the profile and the server can say which kernels ran and why; these tests hold the mirror to
each recorded CPU kind, and to TensorFlow itself on the machine that runs them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pt2tf_serve.client import GrpcClient
from pt2tf_serve.cpu import CONTRACTION_ENV, CPUINFO_ENV, ONEDNN_ENV, cpu_info, onednn_report, onednn_state
from pt2tf_serve.process import DOCKER_CONFIG, ServerProcess, config_copy, embedded_flags, read_env_file, server_env

RECORDED_CPUS = Path(__file__).resolve().parents[1] / "data" / "cpuinfo"
PROC_CPUINFO = Path("/proc/cpuinfo")
# TensorFlow's default per recorded kind, and the flags that decide it (tests/data/cpuinfo/README.md).
DEFAULTS = {
    "amd-epyc-avx2.txt": (False, "none of avx512_vnni, avx512_bf16, avx_vnni, amx_tile, amx_int8, amx_bf16"),
    "amd-epyc-avx512-bf16.txt": (True, "avx512_vnni, avx512_bf16, avx_vnni"),
    "intel-xeon-spr-amx.txt": (True, "avx512_vnni, avx512_bf16, avx_vnni, amx_tile, amx_int8, amx_bf16"),
}


@pytest.mark.parametrize("kind", sorted(DEFAULTS))
def test_tensorflows_default_per_recorded_cpu_kind(kind):
    default, flags = DEFAULTS[kind]
    state = onednn_state(cpu_info(RECORDED_CPUS / kind), environ={})
    assert (state.default, state.enabled, state.eigen_contraction) == (default, default, False)
    assert state.why == f"TensorFlow's default: the CPU has {flags}"
    line = state.describe()
    assert line.startswith(f"oneDNN {'on' if default else 'off'} (TensorFlow's default: the CPU has {flags})")
    # Off, Eigen runs the ops, but its contractions still call oneDNN's sgemm: the line says which.
    assert ("contractions by oneDNN's sgemm" in line) == (not default)


@pytest.mark.parametrize("kind", sorted(DEFAULTS))
@pytest.mark.parametrize(
    ("value", "enabled"), [("1", True), ("true", True), ("TRUE", True), ("0", False), ("False", False)]
)
def test_tf_enable_onednn_opts_overrides_the_default_on_every_kind(kind, value, enabled):
    default, flags = DEFAULTS[kind]
    state = onednn_state(cpu_info(RECORDED_CPUS / kind), environ={ONEDNN_ENV: value})
    assert (state.default, state.enabled) == (default, enabled)
    assert (
        state.why
        == f"{ONEDNN_ENV}={value}; TensorFlow's default here is {'on' if default else 'off'}: the CPU has {flags}"
    )


@pytest.mark.parametrize("kind", sorted(DEFAULTS))
def test_a_value_tensorflow_cannot_parse_keeps_the_default_and_says_so(kind):
    default, _ = DEFAULTS[kind]
    state = onednn_state(cpu_info(RECORDED_CPUS / kind), environ={ONEDNN_ENV: "yes"})
    assert state.enabled == default
    assert f"{ONEDNN_ENV}='yes' is not 0, 1, true or false, so TensorFlow keeps its default" in state.why


@pytest.mark.parametrize(
    ("value", "eigen"), [("0", True), ("false", True), ("False", False), ("1", False), ("", False)]
)
def test_the_contraction_kernel_is_eigens_own_only_for_exactly_0_or_false(value, eigen):
    # eigen_contraction_kernel.cc compares with strcmp: "False" keeps oneDNN's sgemm.
    info = cpu_info(RECORDED_CPUS / "amd-epyc-avx2.txt")
    state = onednn_state(info, environ={CONTRACTION_ENV: value})
    assert state.eigen_contraction == eigen
    assert state.describe().endswith(
        f"contractions by Eigen's own ({CONTRACTION_ENV}=0)"
        if eigen
        else "contractions by oneDNN's sgemm (TensorFlow's custom contraction kernel)"
    )


def test_the_mirror_agrees_with_this_processs_tensorflow():
    # On whichever kind runs the suite: the rule read from /proc/cpuinfo gives what TensorFlow runs.
    from tensorflow.python.util import _pywrap_util_port

    state = onednn_state(cpu_info(PROC_CPUINFO))
    assert state.enabled == bool(_pywrap_util_port.IsMklEnabled()), state.describe()
    running, line = onednn_report(state)
    assert running == state.enabled and line == state.describe()


@pytest.mark.parametrize("value", ["0", "1"])
def test_tensorflow_reads_the_override_at_import_as_the_mirror_says(value, monkeypatch):
    monkeypatch.delenv("PT2TF_CPUINFO", raising=False)
    code = "from tensorflow.python.util import _pywrap_util_port as p; print(p.IsMklEnabled())"
    env = {ONEDNN_ENV: value, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], env=server_env([], env), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == str(onednn_state(cpu_info(PROC_CPUINFO), environ=env).enabled)


def test_a_rehearsed_cpu_kind_is_not_passed_off_as_tensorflows_state(monkeypatch):
    # PT2TF_CPUINFO rehearses another kind's choices; the line must not claim kernels TensorFlow does not run.
    from tensorflow.python.util import _pywrap_util_port

    running = bool(_pywrap_util_port.IsMklEnabled())
    other = "amd-epyc-avx512-bf16.txt" if not running else "amd-epyc-avx2.txt"
    monkeypatch.setenv("PT2TF_CPUINFO", str(RECORDED_CPUS / other))
    monkeypatch.delenv(ONEDNN_ENV, raising=False)
    reported, line = onednn_report(onednn_state(cpu_info(), environ={}))
    if onednn_state(cpu_info(), environ={}).enabled == running:  # this machine forced the same state
        pytest.skip("the rehearsed kind's default is what this TensorFlow runs")
    assert reported == running
    assert (
        f"but TensorFlow here runs oneDNN {'on' if running else 'off'}" in line and str(RECORDED_CPUS / other) in line
    )


def test_server_env_file_shell_wins_and_malformed_lines_are_named(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    (config / "server.env").write_text(f"# a comment\n\n{ONEDNN_ENV}=1\n{CONTRACTION_ENV} = 0\n")
    flags = [f"--volume={config}:/config", f"--volume={tmp_path}:/models"]
    assert read_env_file(config / "server.env") == {ONEDNN_ENV: "1", CONTRACTION_ENV: "0"}
    assert server_env(flags, {"PATH": "/bin"}) == {ONEDNN_ENV: "1", CONTRACTION_ENV: "0", "PATH": "/bin"}
    assert server_env(flags, {ONEDNN_ENV: "0"})[ONEDNN_ENV] == "0"  # the shell's variable wins
    assert server_env([f"--volume={tmp_path}:/models"], {"PATH": "/bin"}) == {"PATH": "/bin"}  # no /config
    (config / "server.env").write_text("TF_ENABLE_ONEDNN_OPTS\n")
    with pytest.raises(ValueError, match=r"server.env:1: 'TF_ENABLE_ONEDNN_OPTS' is not VARIABLE=value"):
        server_env(flags, {})


def test_the_repositorys_server_env_keeps_tensorflows_default():
    # No per-CPU choice is written until a kind's measurement shows one (README "CPU kinds").
    assert read_env_file(DOCKER_CONFIG / "server.env") == {}


def test_the_server_logs_the_onednn_state_it_runs_with(served):
    if served.server is None:
        pytest.skip("an external server logs TensorFlow's own oneDNN notice")
    # The CPU the server describes is PT2TF_CPUINFO's when its environment names one (a rehearsal of another kind);
    # TensorFlow runs on this machine's, and the line says so where the two would run oneDNN differently.
    recorded = served.server.env.get(CPUINFO_ENV)
    described = cpu_info(Path(recorded) if recorded else PROC_CPUINFO)
    state = onednn_state(described, environ=served.server.env)
    running = onednn_state(cpu_info(PROC_CPUINFO), environ=served.server.env).enabled
    (line,) = [line for line in served.server.log().splitlines() if line.startswith(f"[pt2tf-serve] {described.model}")]
    assert line.startswith(f"[pt2tf-serve] {described.describe()}: {state.describe()}"), line
    but = f"but TensorFlow here runs oneDNN {'on' if running else 'off'}: {recorded} describes another CPU than"
    assert line.endswith(f"{but} the one it runs on") == (running != state.enabled), line


def test_server_env_chooses_the_kernels_of_the_embedded_server(repository, expected, tmp_path, monkeypatch):
    # The other state than this CPU's default, and Eigen's own contractions, from the config folder alone.
    monkeypatch.delenv(ONEDNN_ENV, raising=False)
    monkeypatch.delenv(CONTRACTION_ENV, raising=False)
    monkeypatch.delenv("PT2TF_CPUINFO", raising=False)
    other = "0" if onednn_state(cpu_info(PROC_CPUINFO), environ={}).enabled else "1"
    config = config_copy(tmp_path / "config")
    (config / "server.env").write_text(f"{ONEDNN_ENV}={other}\n{CONTRACTION_ENV}=0\n")
    with ServerProcess(
        embedded_flags(config, repository, "--enable_batching=false", "--batching_parameters_file=")
    ) as server:
        state = onednn_state(cpu_info(PROC_CPUINFO), environ={ONEDNN_ENV: other, CONTRACTION_ENV: "0"})
        assert (state.enabled, state.eigen_contraction) == (other == "1", True)
        assert f": {state.describe()}\n" in server.log()  # and TensorFlow agrees: no "but TensorFlow here runs"
        with GrpcClient(server.grpc_target, 60) as client:
            logits = client.predict("resnet18", {"input": expected.tensors[:1]})["output"]
    np.testing.assert_allclose(logits, expected.logits[:1], rtol=1e-3, atol=1e-3)
