"""Bits per byte (engine.eval.bpb): nats over the predicted tokens / (ln 2 x the UTF-8 bytes they spell)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.data.tokenizer import load_tokenizer
from engine.eval.bpb import bits_per_byte, token_bytes
from engine.hardware.device import resolve_precision
from engine.model.transformer import CausalLM

TEXTS = ["The river Alba runs north to the sea.", "Mira bought 3 apples, 2 pears.",
         "a dragon 🐉 and naïve café, 北京是中国的首都。"]


def uniform_model(vocab_size: int) -> CausalLM:
    model = CausalLM(ModelConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: the uniform distribution over the vocabulary
    return model


def test_a_model_with_uniform_logits_scores_exactly_t_ln_v_over_ln2_bytes(builtin_dir: Path) -> None:
    """Guards against the score counting the wrong tokens or bytes: the first token (no context) and special
    tokens (`</s>`) are not scored, every other token costs ln V, and the bytes are those of the scored text."""
    tokenizer = load_tokenizer(builtin_dir)
    vocab = len(tokenizer) + 7  # unused embedding rows still take probability: V is the model's width
    lengths = token_bytes(tokenizer)
    sequences = [tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id] for text in TEXTS]
    result = bits_per_byte(uniform_model(vocab), sequences, lengths, resolve_precision("cpu", "float32"))
    scored = sum(len(ids) - 2 for ids in sequences)  # not the first token, not </s>
    first_bytes = sum(len(tokenizer.decode(ids[:1]).encode("utf-8")) for ids in sequences)
    spelled = sum(len(text.encode("utf-8")) for text in TEXTS) - first_bytes
    assert result.tokens == scored and result.bytes == spelled
    assert math.isclose(result.nats, scored * math.log(vocab), rel_tol=1e-6)
    assert math.isclose(result.bpb, scored * math.log(vocab) / (math.log(2) * spelled), rel_tol=1e-6)


def test_token_bytes_are_exact_for_pieces_of_a_character(builtin_dir: Path) -> None:
    """Guards against counting a token that holds part of a multi-byte character (an emoji, an ideograph cut by
    BPE) by decoding it alone, which gives U+FFFD (3 bytes) for any broken piece: the bytes of a text's tokens
    must add up to the text's own UTF-8 bytes."""
    tokenizer = load_tokenizer(builtin_dir)
    lengths = token_bytes(tokenizer)
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert int(lengths[ids].sum()) == len(text.encode("utf-8")), text
    assert all(int(lengths[i]) == 0 for i in tokenizer.all_special_ids)


def test_long_text_cut_into_windows_predicts_each_token_once(builtin_dir: Path) -> None:
    """Guards against windows of a long document scoring the tokens where they overlap twice (or skipping
    them): the counts equal one window's."""
    tokenizer = load_tokenizer(builtin_dir)
    lengths = token_bytes(tokenizer)
    ids = tokenizer.encode(" ".join(TEXTS * 4), add_special_tokens=False)
    model, cpu = uniform_model(len(tokenizer)), resolve_precision("cpu", "float32")
    whole = bits_per_byte(model, [ids], lengths, cpu, max_len=len(ids))
    cut = bits_per_byte(model, [ids], lengths, cpu, max_len=7, batch_size=3)
    assert (cut.tokens, cut.bytes) == (whole.tokens, whole.bytes) == (len(ids) - 1, int(lengths[ids[1:]].sum()))
