"""Causal self-attention kernels, and the measured choice between them on a CPU.

Two ways to compute the same attention in training:

    "sdpa"    torch's scaled_dot_product_attention (a flash kernel on CPU and GPU): keeps only the
              output and one log-sum-exp per row, never the (T, T) scores.
    "matmul"  two batched matmuls around a softmax: keeps the (heads, T, T) probabilities for
              backward, but in bf16 on an AVX512-BF16 CPU without AMX it ran 1.3-1.4x faster
              than the flash kernel at T = 256-340, and 1.6-2.8x slower at T >= 512 or in fp32
              (bench/RESULTS.md).

Which one wins depends on the CPU, the dtype and the shape, so the trainer measures both once per
(machine, shape) on the CPU, keeps the faster in the machine's tuning record (engine/hardware/tuning.py) and
says which and why in `stage_start`. GPUs, float32 and shapes whose probabilities would take more
than MATMUL_ATTENTION_MAX_BYTES (engine/hardware/flops.py; the estimator counts them) always use SDPA.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.hardware.flops import MATMUL_ATTENTION_MAX_BYTES, attention_probs_bytes
from engine.hardware.tuning import TuningRecord


def matmul_causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(hd) + causal mask) v with grouped k/v read in place: q (B, nh, T, hd),
    k and v (B, nkv, T, hd). The query heads that share a kv head are stacked along the rows, so one
    batched matmul per kv head serves its whole group and k/v are never expanded."""
    B, nh, T, hd = q.shape
    nkv = k.size(1)
    group = nh // nkv
    q_grouped = q.reshape(B, nkv, group * T, hd)  # head h uses kv head h // group
    scores = (q_grouped @ k.transpose(-1, -2)).view(B, nkv, group, T, T) * (1.0 / math.sqrt(hd))
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)  # (T, T): True above the diagonal
    probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1).to(v.dtype)  # (B, nkv, g, T, T)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return (probs.view(B, nkv, group * T, T) @ v).view(B, nh, T, hd)  # (B, nh, T, hd)


def sdpa_causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p,
                                          enable_gqa=q.size(1) != k.size(1))


CAUSAL_KERNELS = {"sdpa": sdpa_causal_attention, "matmul": matmul_causal_attention}
MATMUL_MIN_GAIN = 0.05  # the matmul kernel must be at least this much faster to be chosen


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    heads: int
    kv_heads: int
    seq: int
    head_dim: int
    layers: int
    dtype: str  # "float32" | "bfloat16" | "float16": the compute dtype
    dropout: float = 0.0  # with dropout the CPU's SDPA leaves its flash kernel: timed as trained

    @property
    def matmul_bytes(self) -> int:
        return attention_probs_bytes(self.layers, self.batch, self.heads, self.seq, self.dtype)

    @property
    def key(self) -> str:
        return (f"attention|{self.dtype}|B{self.batch}|h{self.heads}|kv{self.kv_heads}|T{self.seq}|"
                f"d{self.head_dim}|p{self.dropout}")


def time_kernels(shape: AttentionShape, repeats: int = 5) -> dict[str, float]:
    """Seconds of one forward + backward of each kernel at this shape on the CPU: the fastest of
    `repeats` (other work on the machine only adds time)."""
    dtype = getattr(torch, shape.dtype)
    private = torch.Generator().manual_seed(0)  # the global RNG drives dropout in training: leave it be

    def tensor(heads: int) -> Tensor:
        return torch.randn(shape.batch, heads, shape.seq, shape.head_dim, generator=private).to(dtype).requires_grad_()

    q, k, v = tensor(shape.heads), tensor(shape.kv_heads), tensor(shape.kv_heads)
    grad = torch.randn(q.shape, generator=private).to(dtype)
    seconds = {}
    for name, kernel in CAUSAL_KERNELS.items():
        kernel(q, k, v, shape.dropout).backward(grad)  # warm-up: oneDNN picks its kernels on the first call
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            kernel(q, k, v, shape.dropout).backward(grad)
            times.append(time.perf_counter() - start)
        seconds[name] = min(times)
    return seconds


def choose_kernel(device_type: str, shape: AttentionShape, record: TuningRecord) -> tuple[str, str]:
    """(kernel, reason) for training at this shape; measures on first sight of a CPU shape."""
    if device_type != "cpu":
        return "sdpa", f"fused SDPA on {device_type}"
    if shape.dtype == "float32":
        return "sdpa", "float32 on a CPU: the flash kernel was faster at every shape measured"
    if shape.matmul_bytes > MATMUL_ATTENTION_MAX_BYTES:
        return "sdpa", (f"the matmul kernel would keep {shape.matmul_bytes / 2**20:,.0f} MiB of attention "
                        f"probabilities (more than {MATMUL_ATTENTION_MAX_BYTES // 2**20} MiB)")
    known = record.get(shape.key)
    measured_now = known is None
    if known is None:
        known = {f"{name}_s": round(s, 6) for name, s in time_kernels(shape).items()}
        record.put(shape.key, known)
    sdpa_s, matmul_s = known["sdpa_s"], known["matmul_s"]
    # SDPA unless the matmul kernel is clearly faster: it keeps more memory, and a near tie would let
    # timing noise flip the choice from run to run.
    kernel = "matmul" if matmul_s < (1 - MATMUL_MIN_GAIN) * sdpa_s else "sdpa"
    when = "measured now" if measured_now else "measured earlier on this machine"
    return kernel, (f"{when}: fwd+bwd per layer {1e3 * sdpa_s:.1f} ms SDPA vs {1e3 * matmul_s:.1f} ms matmul "
                    f"at {shape.batch}x{shape.seq}")
