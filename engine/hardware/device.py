"""Device and precision choices, and the memory readings that go into step events.

The rule for `dtype = "auto"`: bfloat16 autocast wherever the hardware runs it natively (Ampere+
GPUs, CPUs with AMX or AVX512-BF16, where bf16 matmuls are several times faster than fp32);
float16 with a GradScaler on older CUDA GPUs; float32 elsewhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from engine.errors import DeviceError


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: str  # "float32" | "bfloat16" | "float16": the autocast compute dtype
    why: str  # one line for the log: why this dtype was chosen

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == "float16" and self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)



def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"runtime.device = {name!r} but this torch build sees no CUDA GPU; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"runtime.device = {name!r} but only {torch.cuda.device_count()} GPU(s) are visible; "
                f"pick cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"runtime.device = {name!r} but MPS is not available here; use 'auto' or 'cpu'")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs with AMX-BF16 or AVX512-BF16 (where oneDNN runs bf16 matmuls natively)."""
    from engine.hardware.cpu import cpu_info

    return cpu_info().has_fast_bf16


def resolve_precision(device_name: str, dtype: str) -> Precision:
    device = resolve_device(device_name)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if dtype == "auto":
            if bf16_ok:
                return Precision(device, "bfloat16", "GPU supports bfloat16")
            return Precision(device, "float16", "GPU has no bfloat16 (pre-Ampere): float16 with loss scaling")
        if dtype == "bfloat16" and not bf16_ok:
            name = torch.cuda.get_device_name(device)
            raise DeviceError(
                f"runtime.dtype = 'bfloat16' but {name} has no bfloat16 support (pre-Ampere); "
                "set runtime.dtype = 'float16' (trained with loss scaling) or 'float32'"
            )
        return Precision(device, dtype, "set in the preset")
    if device.type == "cpu":
        if dtype == "float16":
            raise DeviceError("runtime.dtype = 'float16' is not supported for training on the CPU; use 'bfloat16' or 'float32'")
        if dtype == "auto":
            if cpu_has_fast_bf16():
                return Precision(device, "bfloat16", "CPU has AMX/AVX512-BF16: bf16 matmuls are several times faster")
            return Precision(device, "float32", "CPU lacks native bf16: float32 is faster here")
        return Precision(device, dtype, "set in the preset")
    # MPS: bf16 autocast is patchy across macOS versions, float32 is the safe default.
    return Precision(device, "float32" if dtype == "auto" else dtype, "MPS default" if dtype == "auto" else "set in the preset")
