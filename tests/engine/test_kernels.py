"""The memory-lean autograd functions: same values and gradients as the unfused ops, less saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model.kernels import linear_cross_entropy, rms_norm, swiglu_down


def reference_rms_norm(x, weight, eps):
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def leaves(*shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def clones(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for backward while fn() builds its graph."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_rms_norm_matches_unfused(autocast):
    """Guards the hand-written RMSNorm backward (weight and input gradients) and that under autocast
    its output is already bf16, the value autocast would have fed the next matmul."""
    x, w = leaves((4, 6, 32), (32,))
    with torch.no_grad():
        w.mul_(1.5).add_(0.1)
    x2, w2 = clones([x, w])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = rms_norm(x, w, 1e-5)
    expected = reference_rms_norm(x2, w2, 1e-5)
    assert y.dtype == (torch.bfloat16 if autocast else torch.float32)
    torch.testing.assert_close(y, expected.to(y.dtype), rtol=0, atol=0)
    grad = torch.randn_like(expected)
    y.backward(grad.to(y.dtype))
    expected.backward(grad.to(y.dtype).float())
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_swiglu_down_matches_unfused(autocast):
    """Guards the recomputing SwiGLU backward: gate, up and down-weight gradients equal autograd's
    through silu * up and a linear, in fp32 and under bf16 autocast (weight gradient back in fp32).
    Under autocast gate and up are bf16, as the projections before them return."""
    act = torch.bfloat16 if autocast else torch.float32
    gate, up = leaves((3, 5, 24), (3, 5, 24), seed=1, dtype=act)
    (wd,) = leaves((16, 24), seed=2)
    gate2, up2, wd2 = clones([gate, up, wd])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = swiglu_down(gate, up, wd)
        expected = F.linear(F.silu(gate2) * up2, wd2)
    assert y.dtype == expected.dtype
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, expected, **tol)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad)
    for got, want in ((gate, gate2), (up, up2), (wd, wd2)):
        assert got.grad.dtype == want.grad.dtype
        torch.testing.assert_close(got.grad, want.grad, **tol)


@pytest.mark.parametrize("chunk_rows", [4, 7, 64])
def test_linear_cross_entropy_matches_unfused(chunk_rows):
    """Guards the in-place softmax-minus-onehot gradient: loss, hidden and weight gradients equal plain
    F.cross_entropy over full logits, with ignored rows, a ragged last chunk and one chunk for all."""
    hidden, weight = leaves((21, 16), (50, 16), seed=2)
    hidden2, weight2 = clones([hidden, weight])
    targets = torch.randint(0, 50, (21,), generator=torch.Generator().manual_seed(3))
    targets[:4] = -100
    targets[17] = -100
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows)
    expected = F.cross_entropy(hidden2 @ weight2.t(), targets, ignore_index=-100)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    (loss * 3).backward()
    (expected * 3).backward()
    torch.testing.assert_close(hidden.grad, hidden2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, weight2.grad, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_under_autocast_and_no_grad():
    """Guards the bf16 path (matmuls in bf16, loss in fp32, fp32 gradients for fp32 leaves) and that
    evaluation under no_grad computes the same loss without building gradients."""
    hidden, weight = leaves((30, 32), (40, 32), seed=4)
    targets = torch.randint(0, 40, (30,), generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, 8)
        with torch.no_grad():
            eval_loss = linear_cross_entropy(hidden, weight, targets, 8)
    expected = F.cross_entropy(hidden.bfloat16().float() @ weight.bfloat16().float().t(), targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(eval_loss, loss.detach(), rtol=0, atol=0)
    loss.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_fused_functions_save_less_than_unfused_ops():
    """Guards the point of the module: the fused SwiGLU keeps 2 (N, I) tensors instead of 4, RMSNorm
    one (N, C) copy instead of two, the loss no (N, vocab) logits."""
    n, c, inter, vocab = 256, 64, 160, 500
    gate, up, wd, x, w = leaves((n, inter), (n, inter), (c, inter), (n, c), (c,))
    fused, _ = saved_bytes(lambda: swiglu_down(gate, up, wd))
    plain, _ = saved_bytes(lambda: F.linear(F.silu(gate) * up, wd))
    assert fused <= 2 * n * inter * 4 + c * inter * 4 and plain >= 4 * n * inter * 4
    fused, _ = saved_bytes(lambda: rms_norm(x, w, 1e-5))
    plain, _ = saved_bytes(lambda: reference_rms_norm(x, w, 1e-5))
    assert fused <= n * c * 4 + n * 4 + c * 4 < plain
    hidden, weight = leaves((n, c), (vocab, c))
    targets = torch.randint(0, vocab, (n,))
    fused, _ = saved_bytes(lambda: linear_cross_entropy(hidden, weight, targets, 64))
    assert fused <= (n * c + vocab * c) * 4
