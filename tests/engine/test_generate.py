"""Generation: KV cache correctness, sampling rules, streaming text that never splits a character."""

from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.generate import (
    Sampling,
    apply_repetition_penalty,
    filter_logits,
    generate,
    sample_next_token,
    stream_text,
)
from engine.model import CausalLM


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
    from engine.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(trained_run / "tokenizer")
    text = "猫和狗 cat 红色🙂"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = list(stream_text(tokenizer, ids))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert len(ids) > len(pieces) > 1  # some characters really spanned several tokens
