"""Generation: KV cache correctness, sampling rules, streaming text that never splits a character."""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.model.generate import (
    DecodeStep,
    Sampling,
    apply_repetition_penalty,
    filter_logits,
    generate,
    sample_next_token,
    stream_text,
)
from engine.model.transformer import CausalLM


@pytest.fixture(scope="module")
def model() -> CausalLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return CausalLM(config).eval()


def test_greedy_with_cache_equals_greedy_without(model: CausalLM) -> None:
    """Guards against a KV cache that drifts from full recomputation (wrong positions, stale keys)."""
    greedy = Sampling(temperature=0.0, max_new_tokens=40)
    prompt = [1, 17, 42, 99, 5]
    cached = list(generate(model, prompt, greedy, use_cache=True))
    recomputed = list(generate(model, prompt, greedy, use_cache=False))
    assert len(cached) == 40 and cached == recomputed


def randomised(config: ModelConfig) -> CausalLM:
    """A model whose weights exercise every fold of the decode path: norm weights far from one, and
    q/k large enough for attention to be peaked (at the init's 0.02 it is nearly uniform, and a wrong
    rotary position or a dropped key would barely change a logit)."""
    torch.manual_seed(0)
    model = CausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.uniform_(0.5, 1.5)
            elif "q_proj" in name or "k_proj" in name:
                p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        # head_dim 24: an attention scale that is not a power of two; untied output projection.
        ModelConfig(vocab_size=300, hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                    tie_word_embeddings=False),
        ModelConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                    use_moe=True, num_experts=4, num_experts_per_tok=2),
    ],
    ids=["gqa", "hd24-untied", "moe"],
)
def test_decode_step_matches_the_training_forward(config: ModelConfig) -> None:
    """Guards against the inference-only decode path (fused and folded weights, rotary as a matmul,
    unmasked single-query attention) silently drifting from the forward that training runs: a prompt through
    the cache, then one token at a time, must give the training-mode logits within 1e-5 (fp32), for
    two sequences at once; and generating must leave the model trainable and its weights unchanged."""
    model = randomised(config)  # training mode, dropout 0, gradients on
    ids = torch.randint(0, config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    reference = model(ids).logits.detach()  # (2, 20, V)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        cache = model.new_cache(2, 20)
        model(ids[:, :6], cache=cache)
        step = DecodeStep(model, cache.max_len)
        decoded = torch.stack([step(ids[:, t], cache) for t in range(6, 20)], dim=1)  # (2, 14, V)
    assert cache.pos == 20
    torch.testing.assert_close(decoded, reference[:, 6:], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="KV cache holds 20 positions"):
        step(ids[:, 0], cache)

    list(generate(model, [1, 2, 3], Sampling(temperature=0.0, max_new_tokens=5)))
    assert model.training
    model(ids, targets=ids).loss.backward()  # nothing generation made may be an inference tensor
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_same_seed_same_sample_and_stop_token_ends_generation(model: CausalLM) -> None:
    """Guards against unreproducible sampling with a seed, and stop tokens being emitted or ignored."""
    sampling = Sampling(temperature=1.0, top_k=50, max_new_tokens=30, seed=3)
    first = list(generate(model, [1, 2, 3], sampling))
    assert first == list(generate(model, [1, 2, 3], sampling))
    stop = first[5]
    cut = list(generate(model, [1, 2, 3], sampling, stop_ids=[stop]))
    assert cut == first[: first.index(stop)]


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    """Guards against off-by-one nucleus filtering (dropping the token that crosses top_p)."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.81)).tolist() == [[True, True, True, False]]


def test_repetition_penalty_and_greedy() -> None:
    """Guards against the penalty boosting negative logits (it must push both signs down)."""
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    penalised = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert penalised.tolist() == [[1.0, -2.0, 0.5]]
    assert sample_next_token(logits, torch.tensor([[0]]), Sampling(temperature=0, repetition_penalty=5.0)).item() == 2


def test_stream_text_never_splits_a_character(trained_run) -> None:
    """Guards against half a Chinese character (a byte-level token) reaching the screen as '\ufffd'."""
    from engine.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(trained_run / "tokenizer")
    text = "猫和狗 cat 红色🙂"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = list(stream_text(tokenizer, ids))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert len(ids) > len(pieces) > 1  # some characters really spanned several tokens
