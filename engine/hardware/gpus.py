"""What common NVIDIA GPUs offer, from the vendors' datasheets: memory, compute capability, peak.

Torch-free on purpose: the estimator and the studio look cards up by name without importing torch.
Peak figures are dense (no sparsity) tensor-core TFLOP/s for bf16/fp16 where the card has tensor
cores, else its plain fp16 rate. Compute capability 8.0 (Ampere) is where bfloat16 starts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str  # a substring of torch.cuda.get_device_name(), e.g. "A100"
    memory_gib: float
    capability: tuple[int, int]
    peak_tflops: float  # dense bf16 (fp16 before Ampere)

    @property
    def supports_bf16(self) -> bool:
        return self.capability >= (8, 0)


# First match wins, so longer names come before their prefixes ("H100 PCIe" before "H100").
GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("GH200", 96, (9, 0), 989.0), GpuSpec("H200", 141, (9, 0), 989.0),
    GpuSpec("H100 PCIe", 80, (9, 0), 756.0), GpuSpec("H100", 80, (9, 0), 989.0), GpuSpec("H800", 80, (9, 0), 989.0),
    GpuSpec("B200", 180, (10, 0), 2250.0),
    GpuSpec("A100", 80, (8, 0), 312.0), GpuSpec("A800", 80, (8, 0), 312.0),
    GpuSpec("A10G", 24, (8, 6), 125.0), GpuSpec("A10", 24, (8, 6), 125.0),
    GpuSpec("A40", 48, (8, 6), 149.7),
    GpuSpec("L40S", 48, (8, 9), 362.0), GpuSpec("L40", 48, (8, 9), 181.0), GpuSpec("L4", 24, (8, 9), 121.0),
    GpuSpec("RTX 6000 Ada", 48, (8, 9), 364.0), GpuSpec("A6000", 48, (8, 6), 155.0),
    # GeForce RTX 50 (Blackwell, sm 12.0): NVIDIA publishes sparse FP4 "AI TOPS" only; dense bf16 with fp32
    # accumulation is taken as 1/16 of it (÷2 sparsity, ÷4 FP4->16-bit, ÷2 GeForce fp32-accumulate rate).
    GpuSpec("RTX 5090", 32, (12, 0), 209.5), GpuSpec("RTX 5080", 16, (12, 0), 112.6),
    GpuSpec("RTX 5070 Ti", 16, (12, 0), 87.9), GpuSpec("RTX 5070", 12, (12, 0), 61.8),
    GpuSpec("RTX 5060 Ti", 16, (12, 0), 47.4), GpuSpec("RTX 5060", 8, (12, 0), 38.4),
    GpuSpec("RTX 4090", 24, (8, 9), 165.0), GpuSpec("RTX 4080", 16, (8, 9), 97.0), GpuSpec("RTX 4070", 12, (8, 9), 58.0),
    GpuSpec("RTX 4060 Ti", 16, (8, 9), 44.0), GpuSpec("RTX 4060", 8, (8, 9), 30.0),
    GpuSpec("RTX 3090", 24, (8, 6), 71.0), GpuSpec("RTX 3080", 10, (8, 6), 59.5), GpuSpec("RTX 3070", 8, (8, 6), 40.6),
    GpuSpec("RTX 3060", 12, (8, 6), 25.4),
    GpuSpec("V100", 32, (7, 0), 125.0), GpuSpec("T4", 16, (7, 5), 65.0), GpuSpec("RTX 2080 Ti", 11, (7, 5), 53.8),
    GpuSpec("RTX 2070", 8, (7, 5), 29.9), GpuSpec("GTX 1660", 6, (7, 5), 10.0), GpuSpec("GTX 1650", 4, (7, 5), 6.0),
    GpuSpec("GTX 1080 Ti", 11, (6, 1), 11.3),
)


def find_gpu(name: str) -> GpuSpec | None:
    """The table row for a device name ('NVIDIA GeForce GTX 1650') or a short one a user types ('1650')."""
    lowered = " ".join(name.lower().split())
    if not lowered:
        return None
    return next((gpu for gpu in GPUS if gpu.name.lower() in lowered), None) or next(
        (gpu for gpu in GPUS if lowered in gpu.name.lower()), None)
