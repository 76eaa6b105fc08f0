"""What the device can do: the peak FLOP/s that MFU is measured against.

GPU peaks come from engine/hardware/gpus.py (vendors' dense bf16/fp16 tensor-core figures). A CPU has no
datasheet number worth trusting, so its peak is probed: the best of several matmul sizes, each timed
a few times (one short probe under-reads whenever the host is busy, and an under-read peak shows MFU
above 100%). The probe is kept in the machine's tuning record (engine/hardware/tuning.py). During
training an MFU above 100% can only mean the peak is wrong: the peak is probed again once, and if the
step is still faster, MFU is reported as unknown with the reason, never as more than 100%.
`runtime.peak_tflops` overrides all of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.hardware.cpu import isa_peak_estimate_tflops
from engine.hardware.device import Precision
from engine.hardware.gpus import find_gpu
from engine.hardware.tuning import TuningRecord

# Square sizes the CPU probe tries, and how often each: the best of them is the peak.
PROBE_SIZES = (1024, 2048)
PROBE_REPEATS = 3
PROBE_SECONDS = 0.15


def gpu_peak_tflops(name: str) -> float | None:
    gpu = find_gpu(name)
    return gpu.peak_tflops if gpu else None


def measure_matmul_tflops(dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """Achieved TFLOP/s of square matmuls of one size on the CPU, over about `seconds`."""
    private = torch.Generator().manual_seed(0)  # never touch the global RNG: training's dropout uses it
    a = torch.randn(size, size, generator=private).to(dtype)
    b = torch.randn(size, size, generator=private).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN picks its kernel on the first call
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e12


def probe_cpu_peak_tflops(dtype: str) -> float:
    """The best TFLOP/s over PROBE_SIZES x PROBE_REPEATS timings (~1 s): a busy moment lowers one
    timing, not all of them."""
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    return max(measure_matmul_tflops(torch_dtype, size, PROBE_SECONDS)
               for _ in range(PROBE_REPEATS) for size in PROBE_SIZES)


def cpu_peak_tflops(dtype: str, cache_dir: Path | None, refresh: bool = False) -> float:
    """The CPU's probed peak, from the machine's tuning record unless refresh (then probed again and
    the higher of the two kept)."""
    record = TuningRecord(cache_dir, "cpu")
    key = f"peak|{dtype}|probe=best-of-{len(PROBE_SIZES) * PROBE_REPEATS}"
    known = record.get(key)
    if known is None or refresh:
        tflops = max(known["tflops"] if known else 0.0, probe_cpu_peak_tflops(dtype))
        known = {"tflops": tflops}
        record.put(key, known)
    return known["tflops"]


@dataclass(frozen=True)
class Peak:
    """What 100% MFU means for a run: FLOP/s, or None when unknown, and where the figure came from."""

    flops: float | None
    source: str  # "probed: ...", "runtime.peak_tflops", "NVIDIA H200 datasheet", or why it is unknown
    reprobe: Callable[[], float] | None = None  # a fresh CPU probe in FLOP/s, when the peak was probed


def peak_flops(precision: Precision, override_tflops: float | None = None, cache_dir: Path | None = None) -> Peak:
    """The peak FLOP/s that MFU is measured against on this device."""
    if override_tflops:
        return Peak(override_tflops * 1e12, f"runtime.peak_tflops = {override_tflops}")
    if precision.device.type == "cuda":
        name = torch.cuda.get_device_name(precision.device)
        peak = gpu_peak_tflops(name)
        if peak is None:
            return Peak(None, f"peak unknown: {name} is not in the GPU table; set runtime.peak_tflops")
        if precision.dtype == "float32":
            return Peak(peak / 2 * 1e12, f"{name} datasheet, TF32 at half the bf16 rate")
        return Peak(peak * 1e12, f"{name} datasheet")
    if precision.device.type == "cpu":
        dtype = precision.dtype
        probed = cpu_peak_tflops(dtype, cache_dir)
        if probed <= 0:
            return Peak(None, "peak unknown: the matmul probe measured nothing; set runtime.peak_tflops")
        isa = isa_peak_estimate_tflops(torch.get_num_threads(), dtype)
        note = f" (ISA estimate {isa:.3f})" if isa else ""
        return Peak(probed * 1e12, f"probed {dtype} matmul peak {probed:.3g} TFLOP/s{note}",
                    reprobe=lambda: cpu_peak_tflops(dtype, cache_dir, refresh=True) * 1e12)
    return Peak(None, f"peak unknown on {precision.device.type}; set runtime.peak_tflops")


class MfuMeter:
    """MFU for step events that is never above 100%.

    A step faster than the peak proves the peak wrong (a probe that ran while the host was busy):
    the CPU peak is probed once more; if the step is still faster, MFU becomes unknown for the rest
    of the stage, with the reason in `note` and one warning."""

    def __init__(self, peak: Peak, warn: Callable[[str], object]) -> None:
        self.peak, self.warn = peak, warn

    @property
    def note(self) -> str | None:
        return None if self.peak.flops else self.peak.source

    def __call__(self, achieved_flops: float) -> float | None:
        peak = self.peak.flops
        if not peak:
            return None
        if achieved_flops > peak and self.peak.reprobe is not None:
            fresh = self.peak.reprobe()
            peak = max(fresh, peak)
            self.peak = Peak(peak, f"re-probed {fresh / 1e12:.3f} TFLOP/s (a step ran faster than the first probe)")
        if achieved_flops > peak:
            reason = (f"peak unknown: a step ran at {achieved_flops / 1e12:.3f} TFLOP/s, above the peak of "
                      f"{peak / 1e12:.3f} ({self.peak.source}); set runtime.peak_tflops to this "
                      "machine's real peak to see MFU")
            self.peak = Peak(None, reason)
            self.warn(reason)
            return None
        return achieved_flops / peak
