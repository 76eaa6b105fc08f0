"""Memory-lean autograd functions for the hot spots of a decoder layer and the loss.

Autograd keeps whatever each small op needs for its backward: RMSNorm written as five ops keeps its
input *and* its normalised output, SwiGLU keeps gate, up, silu(gate) and their product, and a plain
cross-entropy keeps the whole (tokens, vocab) float32 log-probabilities. Each function here computes
the same values but saves only what its own hand-written backward needs, recomputing cheap
elementwise work instead of storing it:

    rms_norm          saves x and one float32 per row           (not x and the normalised copy)
    swiglu_down       saves gate and up                          (not silu(gate), nor the product)
    linear_cross_entropy  saves two gradients, (N, C) and (vocab, C); never (N, vocab) logits

The gradients match autograd's through the unfused ops (tests/engine/test_kernels.py). Under bf16/fp16
autocast they compute in the autocast dtype exactly where autocast would, and return gradients in
each input's own dtype. `engine/hardware/estimate.py` counts activation memory from what these functions save.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.data.blocks import IGNORE_INDEX


def compute_dtype(device_type: str, fallback: torch.dtype) -> torch.dtype:
    """The dtype autocast would run a matmul in right now on this device type (else fallback)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return fallback


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
        # Statistics in float32 (bf16 squares lose too much); the weight multiplies in the input dtype,
        # as Hugging Face's LlamaRMSNorm does, then the result is cast once for the next matmuls.
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1) float32
        ctx.save_for_backward(x, weight, rstd)
        return (weight * (xf * rstd).to(x.dtype)).to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, rstd = ctx.saved_tensors
        normed = x.float() * rstd  # recomputed rather than stored
        grad = grad_out.float()
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed).reshape(-1, normed.size(-1)).sum(0).to(weight.dtype)
        grad_normed = grad * weight.float()
        # d/dx of x * rstd(x): rstd * (g - normed * mean(g * normed))
        grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None, None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm of the last dimension. Under autocast the output is already in the autocast dtype, so
    the q/k/v (or gate/up) projections that follow share one cast copy instead of making three."""
    out_dtype = compute_dtype(x.device.type, x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        return _RMSNorm.apply(x, weight, eps, out_dtype)


class _SwiGLUDown(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor, down_weight: Tensor) -> Tensor:
        dtype = gate.dtype
        ctx.save_for_backward(gate, up, down_weight)
        return F.linear(F.silu(gate) * up, down_weight.to(dtype))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        gate, up, down_weight = ctx.saved_tensors
        dtype = gate.dtype
        sig = torch.sigmoid(gate)
        silu = gate * sig
        hidden = silu * up  # recomputed: the (N, intermediate) product is never stored
        flat_grad = grad_out.reshape(-1, grad_out.size(-1))
        grad_weight = (flat_grad.t() @ hidden.reshape(-1, hidden.size(-1))).to(down_weight.dtype)
        grad_hidden = grad_out @ down_weight.to(dtype)
        grad_up = grad_hidden * silu
        # silu'(g) = sig * (1 + g * (1 - sig))
        grad_gate = grad_hidden * up * sig * (1 + gate * (1 - sig))
        return grad_gate, grad_up, grad_weight


def swiglu_down(gate: Tensor, up: Tensor, down_weight: Tensor) -> Tensor:
    """down_proj(silu(gate) * up) with gate, up (..., I) and down_weight (C, I); saves gate and up only."""
    dtype = compute_dtype(gate.device.type, gate.dtype)
    with torch.autocast(gate.device.type, enabled=False):
        return _SwiGLUDown.apply(gate.to(dtype), up.to(dtype), down_weight)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (hidden @ weight.T) against targets, a chunk of rows at a time.

    The gradient of cross-entropy with respect to the logits is softmax - onehot, so each chunk's
    gradient is formed in place in the chunk's own logits buffer and pushed through the two matmuls
    right away. Only grad_hidden (N, C) and grad_weight (vocab, C) outlive forward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_rows: int, dtype: torch.dtype,
                denominator: Tensor | None) -> Tensor:
        valid = targets != IGNORE_INDEX
        count = (valid.sum() if denominator is None else denominator).clamp(min=1)  # all ignored: loss 0, not NaN
        scale = 1.0 / count.to(torch.float32)
        need_grad = any(ctx.needs_input_grad[:2])
        h_all, w = hidden.to(dtype), weight.to(dtype)
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        for start in range(0, hidden.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            h, tgt, keep = h_all[rows], targets[rows], valid[rows]
            logits = F.linear(h, w).float()  # (n, vocab): the only logits alive at a time
            safe_tgt = tgt.clamp(min=0)
            picked = logits.gather(1, safe_tgt[:, None]).squeeze(1)  # (n,)
            # logsumexp by hand, in place: torch.logsumexp makes two full temporaries and takes ~2.5x
            # longer on a CPU; here the buffer becomes exp(logits - max) and is reused for the gradient.
            row_max = logits.amax(dim=-1, keepdim=True)  # (n, 1)
            exps = logits.sub_(row_max).exp_()
            sums = exps.sum(dim=-1, keepdim=True)  # (n, 1), >= 1
            lse = (row_max + sums.log()).squeeze(1)  # (n,)
            total += ((lse - picked) * keep).sum()
            if grad_hidden is None or grad_weight is None:  # not need_grad
                continue
            # softmax - onehot, scaled by 1/count, zero on ignored rows: one pass over the buffer.
            row_weight = keep * scale  # (n,)
            probs = exps.mul_(row_weight[:, None] / sums)
            probs.scatter_add_(1, safe_tgt[:, None], -row_weight[:, None])
            grad_logits = probs.to(dtype)
            grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)
            grad_weight += (grad_logits.t() @ h).float()
        if grad_hidden is not None and grad_weight is not None:  # need_grad
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        return (grad_hidden * grad_out if need_h else None, grad_weight * grad_out if need_w else None,
                None, None, None, None)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_rows: int,
                         denominator: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the non-ignored rows of hidden (N, C) projected by weight (vocab, C);
    the logits are float32 a chunk at a time, the matmuls in the autocast dtype when autocast is on.
    With `denominator`, the sum over the rows divided by it instead: the target count of a whole
    optimizer step (all micro-batches, all ranks), so that the pieces add up to the step's token mean."""
    dtype = compute_dtype(hidden.device.type, hidden.dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows, dtype, denominator)
