"""What this CPU is: model name, the instruction-set extensions that decide matmul speed, and the
ceiling those extensions put on FLOP/s. Torch-free, so benchmarks, the estimator and the studio can
name the machine without importing torch.

The same code runs at very different speeds on an Intel Xeon with AMX and on an AMD EPYC with
AVX512-BF16 but no AMX, so every speed figure this project records says which CPU it came from
(`describe_cpu()`), and the probed matmul peak that MFU is measured against is shown beside a rough
ISA figure (`isa_peak_estimate_tflops()`) for a cross-check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The extensions that change which matmul kernels oneDNN/MKL can use, fastest last.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    logical_cpus: int
    max_mhz: float | None  # the highest clock the kernel reports, None when it reports none

    @property
    def isa(self) -> tuple[str, ...]:
        return tuple(flag for flag in ISA_FLAGS if flag in self.flags)

    @property
    def kind(self) -> str:
        """A short class name for result tables: what decides bf16 speed here."""
        if "amx_bf16" in self.flags:
            return "AMX"
        if "avx512_bf16" in self.flags:
            return "AVX512-BF16, no AMX"
        if "avx512f" in self.flags:
            return "AVX-512, no bf16"
        if "avx2" in self.flags:
            return "AVX2"
        return "no AVX2"

    @property
    def has_fast_bf16(self) -> bool:
        """AMX-BF16 or AVX512-BF16: oneDNN runs bf16 matmuls natively, several times faster than fp32."""
        return "amx_bf16" in self.flags or "avx512_bf16" in self.flags


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str], float | None]:
    """(model name, flags, the 'cpu MHz' of the first processor) from /proc/cpuinfo's text (pure)."""
    model, flags, mhz = "unknown-cpu", frozenset[str](), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown-cpu":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
    return model, flags, mhz


def _max_mhz(fallback: float | None) -> float | None:
    # cpufreq knows the boost clock on bare metal; virtual machines often expose only cpuinfo's MHz.
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        return fallback


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    model, flags, mhz = parse_cpuinfo(text)
    return CpuInfo(model, flags, os.cpu_count() or 1, _max_mhz(mhz))


def describe_cpu(info: CpuInfo | None = None) -> str:
    """One line for result tables: 'AMD EPYC (AVX512-BF16, no AMX; avx2 fma avx512f avx512_bf16), 2 logical CPUs'."""
    info = info or cpu_info()
    clock = f", {info.max_mhz / 1000:.2f} GHz" if info.max_mhz else ""
    return f"{info.model} ({info.kind}; {' '.join(info.isa) or 'no AVX'}), {info.logical_cpus} logical CPUs{clock}"


def flops_per_cycle(flags: frozenset[str], dtype: str) -> int:
    """Dense FLOPs one core can start per cycle for a matmul in dtype, by ISA: two FMA pipes of the
    widest vectors (AVX2 8 fp32 lanes, AVX-512 16), 2 FLOPs per FMA; AVX512-BF16's dot product does
    two bf16 pairs per fp32 lane; an AMX tile unit 1,024 bf16 multiply-adds. Nominal: some cores
    (AMD Zen 4) split 512-bit work over 256-bit pipes and reach half of it."""
    if dtype == "bfloat16":
        if "amx_bf16" in flags:
            return 2048
        if "avx512_bf16" in flags:
            return 2 * 16 * 2 * 2
    if "avx512f" in flags:
        return 2 * 16 * 2
    if "avx2" in flags and "fma" in flags:
        return 2 * 8 * 2
    return 2 * 4 * 2  # SSE: a generous bound for anything older


def isa_peak_estimate_tflops(threads: int, dtype: str, info: CpuInfo | None = None) -> float | None:
    """threads x clock x FLOPs/cycle (None without a clock). A cross-check, not a bound: virtual
    machines report the base clock while cores boost above it, and half-width pipes halve the
    FLOPs/cycle; on the 2-vCPU AMD EPYC here the probe reached 1.1x this in bf16 and 0.5x in fp32."""
    info = info or cpu_info()
    if not info.max_mhz:
        return None
    return threads * info.max_mhz * 1e6 * flops_per_cycle(info.flags, dtype) / 1e12
