"""engine/model/transformer.py: the decoder's maths, its cache, its loss and its Hugging Face compatibility."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.model.transformer import CausalLM, count_parameters, flops_per_token

VOCAB = 97


def tiny(**overrides) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64, rope_theta=10000.0)
    return ModelConfig(**(fields | overrides))


def tiny_moe(**overrides) -> ModelConfig:
    return tiny(**(dict(use_moe=True, num_experts=4, num_experts_per_tok=2, num_shared_experts=1) | overrides))


def make(config: ModelConfig, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(config)


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_future_tokens_do_not_change_past_logits():
    """Guards against a missing or misaligned causal mask leaking later tokens into earlier logits."""
    model = make(tiny()).eval()
    ids = tokens(2, 12)
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 5) % VOCAB
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("config", [tiny(), tiny(tie_word_embeddings=False)], ids=["tied", "untied"])
def test_chunked_loss_equals_unchunked_cross_entropy(config):
    """Guards against the chunked loss dividing per chunk, dropping a ragged last chunk, counting
    -100 positions, or giving gradients that differ from plain cross-entropy (tied and untied)."""
    model = make(config)
    model.loss_chunk_rows = 5  # 3*7 = 21 rows: four full chunks and a ragged one
    reference = copy.deepcopy(model)
    ids = tokens(3, 7)
    targets = tokens(3, 7, seed=2)
    targets[0, :4] = -100
    targets[2, 5:] = -100
    loss = model(ids, targets=targets).loss
    expected = F.cross_entropy(reference(ids).logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    loss.backward()
    expected.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-5, msg=name)


def test_all_ignored_targets_give_zero_loss_not_nan():
    """Guards against 0/0 when a batch has no supervised position (an SFT batch of prompts only)."""
    model = make(tiny())
    ids = tokens(2, 6)
    loss = model(ids, targets=torch.full_like(ids, -100)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():  # the no-grad path (evaluation) as well
        assert model(ids, targets=torch.full_like(ids, -100)).loss.item() == 0.0


def test_loss_without_grad_matches_loss_with_grad():
    """Guards against the evaluation (no-grad) loss path drifting from the training one."""
    model = make(tiny()).eval()
    ids, targets = tokens(2, 9), tokens(2, 9, seed=3)
    with torch.no_grad():
        evaluated = model(ids, targets=targets).loss
    torch.testing.assert_close(evaluated, model(ids, targets=targets).loss.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", [tiny(), tiny_moe()], ids=["dense", "moe"])
def test_kv_cache_decode_equals_full_forward(config):
    """Guards against wrong rotary offsets or causal masks when decoding with a cache: prefill plus
    one token at a time, and a prefill split in two (t > 1 at pos > 0), must match one full pass."""
    model = make(config).eval()
    ids = tokens(2, 11)
    with torch.no_grad():
        full = model(ids).logits  # (2, 11, vocab)
        cache = model.new_cache(2, 16)
        steps = [model(ids[:, :4], cache=cache).logits]
        steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(4, 11)]
        assert cache.pos == 11
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)

        cache = model.new_cache(2, 11)
        first = model(ids[:, :5], cache=cache).logits
        second = model(ids[:, 5:], cache=cache).logits
        torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=0, atol=1e-5)
        last = model(ids, last_only=True).logits
        torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-6)


def test_cache_overflow_raises_clear_error():
    """Guards against silently writing past the preallocated cache (a shape error deep in SDPA)."""
    model = make(tiny()).eval()
    cache = model.new_cache(1, 8)
    with torch.no_grad():
        model(tokens(1, 6), cache=cache)
        with pytest.raises(ValueError, match="KV cache holds 8 positions"):
            model(tokens(1, 3), cache=cache)


def test_rotary_table_grows_on_demand():
    """Guards against allocating max_position_embeddings up front, or a grown table giving other values."""
    model = make(tiny(max_position_embeddings=4096)).eval()
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        model(tokens(1, 5))
        assert model.model.rotary_emb.cos.size(0) < 4096
        grown = model(tokens(1, 40)).logits
        torch.testing.assert_close(grown, fresh(tokens(1, 40)).logits, rtol=0, atol=1e-6)


def test_tied_embeddings_share_storage_and_untied_do_not():
    """Guards against tying by copy (the two drift apart in training) or tying when asked not to."""
    tied = make(tiny())
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    state = tied.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    untied = make(tiny(tie_word_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize(
    "config", [tiny(), tiny(tie_word_embeddings=False), tiny_moe(), tiny_moe(num_shared_experts=0)],
    ids=["dense", "untied", "moe", "moe-no-shared"],
)
def test_count_parameters_matches_real_model(config):
    """Guards against the arithmetic count (used by the estimator and MFU) drifting from the model."""
    total, active = count_parameters(config)
    model = make(config)
    assert total == model.num_parameters() == sum(p.numel() for p in model.parameters())
    if config.use_moe:
        expert = 3 * config.hidden_size * config.intermediate_size
        unvisited = (config.num_experts - config.num_experts_per_tok) * expert
        assert active == total - config.num_hidden_layers * unvisited < total
    else:
        assert active == total


@pytest.mark.parametrize("config", [tiny(), tiny(tie_word_embeddings=False)], ids=["tied", "untied"])
def test_flops_per_token_counts_lm_head_but_not_lookup(config):
    """Guards against the MFU numerator counting the embedding lookup as a matmul or forgetting lm_head."""
    model = make(config)
    matmul_params = sum(p.numel() for p in model.parameters())
    if not config.tie_word_embeddings:
        matmul_params -= model.model.embed_tokens.weight.numel()
    attention = 12 * config.num_hidden_layers * config.hidden_size * 256
    assert flops_per_token(config, 256) == 6 * matmul_params + attention


def test_moe_trains_and_balances():
    """Guards against a router that gets no gradient, experts that never receive tokens, and an aux
    loss that leaks into evaluation."""
    model = make(tiny_moe()).train()
    ids = tokens(4, 16)
    out = model(ids, targets=tokens(4, 16, seed=5))
    # A fresh router is near uniform, where num_experts * sum(f_i * P_i) is 1 per layer.
    expected = model.config.moe_aux_loss_coef * model.config.num_hidden_layers
    assert out.aux_loss is not None and abs(out.aux_loss.item() - expected) < 0.1 * expected
    (router_grad,) = torch.autograd.grad(out.aux_loss, model.model.layers[0].mlp.gate.weight, retain_graph=True)
    assert router_grad.abs().sum() > 0  # the balance loss must reach the router through P_i
    out.loss.backward()
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
    for layer in model.model.layers:
        for expert in list(layer.mlp.experts) + list(layer.mlp.shared_experts):
            for p in expert.parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        evaluated = model(ids, targets=ids)
    assert evaluated.aux_loss is None


def test_dropout_is_active_in_training_only():
    """Guards against config.dropout being ignored, or dropout left on in evaluation and generation."""
    model = make(tiny(dropout=0.3))
    ids = tokens(2, 8)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)
        model.eval()
        assert torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_state_dict_loads_into_transformers_llama_with_equal_logits(tie):
    """Guards against any parameter-name or maths difference from HF Llama, which would make the
    export a conversion instead of a plain state_dict save."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = tiny(tie_word_embeddings=tie)
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=tie, attention_bias=False, mlp_bias=False, hidden_act="silu",
    )
    hf_config._attn_implementation = "eager"  # an independent reference, not our SDPA path
    ours = make(config).eval()
    hf = LlamaForCausalLM(hf_config).eval()
    assert hf.config._attn_implementation == "eager"
    assert set(hf.state_dict()) == set(ours.state_dict())
    hf.load_state_dict(ours.state_dict(), strict=True)
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ids = tokens(2, 13)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours(ids).logits, rtol=0, atol=1e-4)


def test_bf16_autocast_on_cpu_trains_close_to_fp32():
    """Guards against dtype mismatches under autocast (the MoE scatter, the chunked loss's fp32
    gradient buffers, rotary tables) that would only show up on bf16 runs."""
    for config in (tiny(), tiny_moe()):
        model = make(config)
        ids, targets = tokens(2, 16), tokens(2, 16, seed=4)
        reference = model(ids, targets=targets).loss.item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, targets=targets).loss
        loss.backward()
        assert loss.dtype == torch.float32
        assert abs(loss.item() - reference) < 0.05
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
