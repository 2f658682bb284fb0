"""What this machine's CPU is and can do, from /proc/cpuinfo (standard library only).

Figures differ by 2× between the machines this project runs on, and bf16 only pays where the
CPU computes it natively, so every report names the CPU and its relevant flags.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The flags that decide fp32 and bf16 speed of oneDNN kernels, and whether TensorFlow turns oneDNN on.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# TensorFlow's DefaultOneDnnPolicy on x86 Linux (tensorflow/core/util/port.cc, the same in 2.15, 2.19
# and 2.21, and in the tensorflow/serving images built from it): oneDNN is on by default only on a
# CPU with one of these; elsewhere (AVX2-only, AVX-512 without VNNI) TensorFlow runs Eigen's kernels.
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
# Read once, when TensorFlow's oneDNN check first runs (at import): "0"/"false" off, "1"/"true" on,
# any case; anything else keeps the default, with a warning from TensorFlow.
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Eigen's matrix contraction (MatMul, and the convolutions Eigen runs as contractions, which is every
# one when oneDNN is off) calls oneDNN's sgemm unless this is exactly "0" or "false"
# (xla/tsl/framework/contraction/eigen_contraction_kernel.cc); then Eigen's own kernel runs.
CONTRACTION_ENV = "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL"


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    cores: int

    @property
    def relevant_flags(self) -> list[str]:
        return [flag for flag in RELEVANT_FLAGS if flag in self.flags]

    @property
    def bf16(self) -> bool:
        """The CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), as oneDNN's bf16 kernels need."""
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def kind(self) -> str:
        """The CPU kind as this project's tables group figures: what decides oneDNN's fp32 and bf16 kernels."""
        if "amx_bf16" in self.flags:
            return "AVX-512 + AMX"
        if "avx512_bf16" in self.flags:
            return "AVX-512 + avx512_bf16"
        if "avx512f" in self.flags:
            return "AVX-512, no bf16"
        return "AVX2 only" if "avx2" in self.flags else "no AVX2"

    def describe(self) -> str:
        """One line for reports: model, cores, relevant flags (and the ones it lacks)."""
        missing = [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16") if flag not in self.flags]
        return f"{self.model}, {self.cores} cores, flags: {' '.join(self.relevant_flags) or 'none of interest'}" + (
            f" (no {', '.join(missing)})" if missing else ""
        )


CPUINFO_ENV = "PT2TF_CPUINFO"


def cpuinfo_path() -> Path:
    """Where the CPU is read from: $PT2TF_CPUINFO (a recorded block of another machine), else /proc/cpuinfo.

    The variable exists for tests: every CPU-dependent choice (bf16 allowed or refused, which
    objectives a machine gets) is made from cpu_info(), so a test can drive a server, a convert or
    a bench through another CPU kind's recorded description (tests/data/cpuinfo/).
    """
    return Path(os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo")


def cpu_info(cpuinfo: Path | None = None) -> CpuInfo:
    """The CPU's model name and flags; an unknown model when the description cannot be read."""
    cpuinfo = cpuinfo or cpuinfo_path()
    model, flags = "", frozenset()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError as exc:
        if os.environ.get(CPUINFO_ENV) and cpuinfo == cpuinfo_path():  # a typo must not pass for a CPU without bf16
            raise OSError(f"{CPUINFO_ENV}={cpuinfo} cannot be read ({exc.strerror}): name a recorded block") from None
    return CpuInfo(model or platform.processor() or "unknown CPU", flags, os.cpu_count() or 1)


def bf16_refusal(info: CpuInfo | None = None) -> str | None:
    """Why bf16 must not run here, or None when the CPU supports it and oneDNN is on.

    The CPU comes first: on a CPU without bf16, unsetting TF_ENABLE_ONEDNN_OPTS would not help.
    """
    info = info or cpu_info()
    if not info.bf16:
        return (
            f"bf16 needs a CPU with {' or '.join(BF16_FLAGS)} in {cpuinfo_path()}; this one ({info.model}) has "
            "neither, so oneDNN has no native bf16 kernels here (emulated at best, slower than fp32): "
            "serve the fp32 model"
        )
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false"):
        # Grappler's bf16 rewrite is a oneDNN one: without oneDNN it is skipped and fp32 runs silently.
        return "bf16 auto mixed precision is a oneDNN rewrite, and TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off: unset it"
    return None


@dataclass(frozen=True)
class OneDnnState:
    """Whether a TensorFlow process runs oneDNN's kernels, TensorFlow's default for the CPU, and why."""

    default: bool  # TensorFlow's default for this CPU
    enabled: bool  # what a TensorFlow process started with this environment runs
    why: str  # the flags, or the variable, that decided
    eigen_contraction: bool  # Eigen's own contraction kernel instead of oneDNN's sgemm

    @property
    def contraction(self) -> str:
        """The kernel Eigen's contractions (MatMul, Eigen's convolutions) run."""
        if self.eigen_contraction:
            return f"Eigen's own ({CONTRACTION_ENV}=0)"
        return "oneDNN's sgemm (TensorFlow's custom contraction kernel)"

    def describe(self) -> str:
        """One line for logs and reports: on or off, why, and what runs the contractions when it is off."""
        line = f"oneDNN {'on' if self.enabled else 'off'} ({self.why})"
        if not self.enabled:
            line += f"; Eigen's kernels, contractions by {self.contraction}"
        elif self.eigen_contraction:
            line += f"; contractions outside oneDNN's ops by {self.contraction}"
        return line


def onednn_default(info: CpuInfo | None = None) -> tuple[bool, str]:
    """TensorFlow's default for this CPU (port.cc's DefaultOneDnnPolicy, x86 Linux) and the flags that decide it."""
    info = info or cpu_info()
    found = [flag for flag in ONEDNN_DEFAULT_FLAGS if flag in info.flags]
    if found:
        return True, f"the CPU has {', '.join(found)}"
    return False, f"the CPU has none of {', '.join(ONEDNN_DEFAULT_FLAGS)}"


def onednn_state(info: CpuInfo | None = None, environ: Mapping[str, str] | None = None) -> OneDnnState:
    """What a TensorFlow process with this environment (default: ours) runs on this CPU, as TensorFlow decides it."""
    environ = os.environ if environ is None else environ
    default, flags = onednn_default(info)
    why = f"TensorFlow's default: {flags}"
    enabled = default
    value = environ.get(ONEDNN_ENV)
    if value is not None:
        forced = {"0": False, "false": False, "1": True, "true": True}.get(value.lower())
        if forced is None:
            why += f"; {ONEDNN_ENV}={value!r} is not 0, 1, true or false, so TensorFlow keeps its default"
        else:
            enabled = forced
            why = f"{ONEDNN_ENV}={value}; TensorFlow's default here is {'on' if default else 'off'}: {flags}"
    eigen_contraction = environ.get(CONTRACTION_ENV) in ("0", "false")
    return OneDnnState(default=default, enabled=enabled, why=why, eigen_contraction=eigen_contraction)


def onednn_report(state: OneDnnState | None = None) -> tuple[bool, str]:
    """What this process's TensorFlow runs, in its own words, beside what the CPU and the environment predict.

    Imports TensorFlow (call it where TensorFlow is loaded anyway). The two disagree only when the CPU
    described is not the one TensorFlow runs on: PT2TF_CPUINFO rehearses another kind's choices, not its
    kernels, so the line says so instead of claiming a state TensorFlow does not run.
    """
    from tensorflow.python.util import _pywrap_util_port

    state = state or onednn_state()
    running = bool(_pywrap_util_port.IsMklEnabled())
    line = state.describe()
    if running != state.enabled:
        line += (
            f"; but TensorFlow here runs oneDNN {'on' if running else 'off'}: {cpuinfo_path()} describes"
            " another CPU than the one it runs on"
        )
    return running, line
