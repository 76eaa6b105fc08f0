"""What the device can do: peak matmul FLOP/s for MFU, and NVML readings on NVIDIA GPUs.

GPU peaks come from engine/gpus.py (vendors' dense bf16/fp16 tensor-core figures); a CPU has no
datasheet number worth trusting, so its peak is measured once (a few large matmuls, ~0.5 s) and cached
per CPU model, thread count and dtype. `runtime.peak_tflops` overrides both.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from engine.device import Precision
from engine.gpus import find_gpu

def gpu_peak_tflops(name: str) -> float | None:
    gpu = find_gpu(name)
    return gpu.peak_tflops if gpu else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown-cpu"


def measure_matmul_tflops(dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """Achieved TFLOP/s of square matmuls on the CPU (what 100% MFU means on this machine)."""
    private = torch.Generator().manual_seed(0)  # never touch the global RNG: training's dropout uses it
    a = torch.randn(size, size, generator=private).to(dtype)
    b = torch.randn(size, size, generator=private).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN picks its kernel on the first call
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e12


def cpu_peak_tflops(dtype: str, cache_dir: Path | None) -> float:
    key = f"{_cpu_model()}|threads={torch.get_num_threads()}|{dtype}|torch={torch.__version__}"
    cache_file = cache_dir / "hardware.json" if cache_dir else None
    known: dict[str, float] = {}
    if cache_file and cache_file.is_file():
        try:
            known = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            known = {}
    if key not in known:
        known[key] = measure_matmul_tflops(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        if cache_file:
            from engine.atomic import write_json_atomic

            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache_file, known)
    return known[key]


def peak_flops(precision: Precision, override_tflops: float | None = None, cache_dir: Path | None = None) -> float | None:
    """Peak FLOP/s that MFU is measured against, or None when unknown (MFU is then not reported)."""
    if override_tflops:
        return override_tflops * 1e12
    if precision.device.type == "cuda":
        peak = gpu_peak_tflops(torch.cuda.get_device_name(precision.device))
        if peak and precision.dtype == "float32":
            peak /= 2  # TF32 tensor cores run at half the bf16 rate
        return peak * 1e12 if peak else None
    if precision.device.type == "cpu":
        return cpu_peak_tflops(precision.dtype, cache_dir) * 1e12
    return None


@lru_cache(maxsize=1)
def _nvml() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - no NVML (no driver, no package, not NVIDIA): just no readings
        return None


def nvml_snapshot(device: torch.device) -> dict[str, float]:
    """GPU utilisation and total memory from NVML, or {} when NVML is unavailable."""
    nvml = _nvml()
    if nvml is None:
        return {}
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return {"gpu_util_pct": float(util.gpu), "mem_total_mb": memory.total / (1024 * 1024)}
    except Exception:  # noqa: BLE001
        return {}
