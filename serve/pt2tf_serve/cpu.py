"""What this machine's CPU is and can do, from /proc/cpuinfo (standard library only).

Figures differ by 2× between the machines this project runs on, and bf16 only pays where the
CPU computes it natively, so every report names the CPU and its relevant flags.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

# The flags that decide fp32 and bf16 speed of oneDNN kernels.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
    """Why bf16 must not run here, or None when the CPU supports it and oneDNN is on."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false"):
        # Grappler's bf16 rewrite is a oneDNN one: without oneDNN it is skipped and fp32 runs silently.
        return "bf16 auto mixed precision is a oneDNN rewrite, and TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off: unset it"
    info = info or cpu_info()
    if info.bf16:
        return None
    return (
        f"bf16 needs a CPU with {' or '.join(BF16_FLAGS)} in {cpuinfo_path()}; this one ({info.model}) has neither, "
        "so oneDNN has no native bf16 kernels here (emulated at best, slower than fp32): serve the fp32 model"
    )
