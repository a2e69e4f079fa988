"""What this CPU can do fast: bf16 and int8 (VNNI) instructions, read from the kernel's CPU flags."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# The flags that decide the engines' speed, shown by the benchmark and in docs.
RELEVANT_FLAGS = ("avx2", "avx512f", *BF16_FLAGS, *INT8_FLAGS, "amx_tile")


@dataclass(frozen=True)
class CpuCaps:
    """``bf16``: native bf16 dot products; ``int8``: VNNI int8 dot products (without them an int8
    model is emulated and gains little or loses)."""

    bf16: bool
    int8: bool
    flags: frozenset[str] = frozenset()

    def relevant(self) -> list[str]:
        return [f for f in RELEVANT_FLAGS if f in self.flags]


def caps_from_flags(flags: frozenset[str]) -> CpuCaps:
    return CpuCaps(bf16=any(f in flags for f in BF16_FLAGS), int8=any(f in flags for f in INT8_FLAGS),
                   flags=flags)


def read_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's ``flags`` line (empty where there is no /proc/cpuinfo: not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_caps() -> CpuCaps:
    """This machine's capabilities. Without /proc/cpuinfo, OpenVINO's own report (when installed)
    says whether bf16 is native; int8 is then taken as absent, so ``auto`` never guesses."""
    flags = read_flags()
    if flags:
        return caps_from_flags(flags)
    try:
        import openvino

        reported = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no OpenVINO, or no CPU plugin: nothing known
        return CpuCaps(bf16=False, int8=False)
    return CpuCaps(bf16="BF16" in reported, int8=False)


@functools.cache
def cpu_signature() -> str:
    """This CPU as a speed record names it: model, logical CPUs and the flags that matter. Speeds
    measured under another signature say nothing about this machine."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    except OSError:
        pass
    flags = ",".join(cpu_caps().relevant()) or "no bf16/int8 flags"
    return f"{model}; {os.cpu_count() or 1} CPUs; {flags}"
