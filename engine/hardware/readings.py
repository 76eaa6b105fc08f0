"""What the device reports while training: memory (CUDA allocator figures on a GPU, the process's RSS
elsewhere) and, on NVIDIA GPUs, utilisation and total memory from NVML. Every step event carries these."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import torch


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
        handle = _nvml_handle(nvml, device)
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return {"gpu_util_pct": float(util.gpu), "mem_total_mb": memory.total / (1024 * 1024)}
    except Exception:  # noqa: BLE001
        return {}


def _nvml_handle(nvml: Any, device: torch.device) -> Any:
    """NVML's handle for a torch CUDA device. NVML numbers GPUs its own way (it ignores CUDA_VISIBLE_DEVICES and
    CUDA's ordering), so under torchrun rank N's cuda:N is found by its UUID; the index is the fallback."""
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - an older torch or driver: the index, right whenever nothing is remapped
        return nvml.nvmlDeviceGetHandleByIndex(device.index or 0)


def memory_snapshot(device: torch.device) -> dict[str, float]:
    """Memory figures in MiB: CUDA allocator figures on a GPU, process RSS elsewhere."""
    if device.type == "cuda":
        mib = 1024 * 1024
        return {
            "mem_alloc_mb": torch.cuda.memory_allocated(device) / mib,
            "mem_peak_mb": torch.cuda.max_memory_allocated(device) / mib,
            "mem_reserved_mb": torch.cuda.memory_reserved(device) / mib,
            **nvml_snapshot(device),
        }
    return {"rss_mb": process_rss_mb()}


def process_rss_mb() -> float:
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / (1024 * 1024)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return 0.0
