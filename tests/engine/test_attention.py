"""The two causal attention kernels and the measured choice between them (engine/model/attention.py)."""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.hardware.estimate import Target, training_memory
from engine.hardware.flops import MATMUL_ATTENTION_MAX_BYTES
from engine.hardware.tuning import TuningRecord
from engine.model import attention
from engine.model.attention import (
    AttentionShape,
    choose_kernel,
    matmul_causal_attention,
    sdpa_causal_attention,
)
from engine.model.transformer import CausalLM


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4), (8, 1)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_matmul_kernel_equals_sdpa_forward_and_backward(heads, kv_heads, dtype, tol):
    """Guards the grouped layout of the matmul kernel: query head h must read kv head h // group (as
    HF's repeat_kv does); a wrong reshape gives plausible numbers that differ from SDPA."""
    g = torch.Generator().manual_seed(0)
    B, T, hd = 2, 37, 16

    def inputs():
        return [torch.randn(B, n, T, hd, generator=g).to(dtype).requires_grad_() for n in (heads, kv_heads, kv_heads)]

    q, k, v = inputs()
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, ref = matmul_causal_attention(q, k, v), sdpa_causal_attention(q2, k2, v2)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad)
    ref.backward(grad)
    assert torch.allclose(out.float(), ref.float(), atol=tol, rtol=tol)
    for mine, theirs in ((q, q2), (k, k2), (v, v2)):
        assert torch.allclose(mine.grad.float(), theirs.grad.float(), atol=tol * 4, rtol=tol * 4)


def test_the_model_trains_the_same_with_either_kernel():
    """Guards the wiring: a model switched to the matmul kernel computes the same loss and gradients."""
    config = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2)
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (3, 17))
    results = {}
    for kernel in ("sdpa", "matmul"):
        torch.manual_seed(1)
        model = CausalLM(config)
        model.set_attention_kernel(kernel)
        loss = model(tokens[:, :-1], targets=tokens[:, 1:]).loss
        loss.backward()
        results[kernel] = (loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert results["matmul"][0] == pytest.approx(results["sdpa"][0], abs=1e-6)
    assert torch.allclose(results["matmul"][1], results["sdpa"][1], atol=1e-6)


def shape(**changes) -> AttentionShape:
    base = dict(batch=2, heads=4, kv_heads=2, seq=32, head_dim=16, layers=2, dtype="bfloat16")
    return AttentionShape(**{**base, **changes})


def test_the_choice_is_measured_once_per_machine_and_shape(monkeypatch, tmp_path):
    """Guards the cost and the consistency of the choice: one measurement per shape on a machine,
    reused by later stages and runs (a run and its resume must use the same kernel)."""
    calls = []

    def timed(s, repeats=3):
        calls.append(s)
        return {"sdpa": 0.004, "matmul": 0.003}

    monkeypatch.setattr(attention, "time_kernels", timed)
    record = TuningRecord(tmp_path)
    kernel, reason = choose_kernel("cpu", shape(), record)
    assert kernel == "matmul" and "measured now" in reason and "4.0 ms SDPA vs 3.0 ms matmul" in reason
    kernel, reason = choose_kernel("cpu", shape(), TuningRecord(tmp_path))
    assert kernel == "matmul" and "measured earlier" in reason
    assert len(calls) == 1
    choose_kernel("cpu", shape(seq=64), record)
    assert len(calls) == 2


def test_a_near_tie_keeps_sdpa(monkeypatch):
    """Guards against timing noise flipping the kernel between runs (and paying the matmul kernel's
    memory for nothing): it must be at least MATMUL_MIN_GAIN faster."""
    monkeypatch.setattr(attention, "time_kernels", lambda s, repeats=5: {"sdpa": 0.0040, "matmul": 0.0039})
    assert choose_kernel("cpu", shape(), TuningRecord(None))[0] == "sdpa"


def test_gpus_float32_and_large_probabilities_use_sdpa_without_measuring(monkeypatch):
    """Guards memory and start-up: the matmul kernel is never considered where it cannot win or would
    keep more than MATMUL_ATTENTION_MAX_BYTES of probabilities."""
    monkeypatch.setattr(attention, "time_kernels", lambda *a, **k: pytest.fail("measured"))
    record = TuningRecord(None)
    assert choose_kernel("cuda", shape(), record)[0] == "sdpa"
    assert choose_kernel("cpu", shape(dtype="float32"), record)[0] == "sdpa"
    big = shape(batch=64, seq=1024, layers=8)
    assert big.matmul_bytes > MATMUL_ATTENTION_MAX_BYTES
    kernel, reason = choose_kernel("cpu", big, record)
    assert kernel == "sdpa" and "MiB of attention probabilities" in reason


def test_the_real_timing_returns_both_kernels():
    """Guards the measurement itself (it runs at every first stage of a shape on a CPU)."""
    seconds = attention.time_kernels(shape(), repeats=1)
    assert set(seconds) == {"sdpa", "matmul"} and all(s > 0 for s in seconds.values())


def test_the_estimator_counts_what_the_matmul_kernel_keeps():
    """Guards the estimate on a CPU in bf16, where the matmul kernel may be chosen: its probabilities
    are counted while under the cap, and not above it (SDPA is used there)."""
    config = ModelConfig(vocab_size=1536, hidden_size=192, num_hidden_layers=4, num_attention_heads=6,
                         num_key_value_heads=2)
    cpu_bf16, cpu_fp32 = Target("cpu", "bfloat16"), Target("cpu", "float32")
    small = training_memory(config, 16, 256, cpu_bf16).activations
    probs = 4 * 16 * 6 * 256 * 256 * 2
    fp32_small = training_memory(config, 16, 256, cpu_fp32).activations
    assert small - probs == pytest.approx(fp32_small / 2, rel=0.2)  # the rest is the dtype's usual share
    huge_batch = 512
    assert 4 * huge_batch * 6 * 256 * 256 * 2 > MATMUL_ATTENTION_MAX_BYTES
    huge = training_memory(config, huge_batch, 256, cpu_bf16).activations
    assert huge == pytest.approx(small / 16 * huge_batch - probs / 16 * huge_batch, rel=1e-6)
