"""Parameter and FLOP counts from a model config alone: no torch, so the estimator and the studio can
use them before anything heavy is loaded. engine/model/transformer.py re-exports both."""

from __future__ import annotations

from engine.config import ModelConfig

# fp32 logits per loss chunk: 16M floats = 64 MB, whatever the vocabulary size; measured no slower than
# one unchunked pass. The model chunks its loss by it and the estimator counts memory by it.
LOSS_CHUNK_ELEMENTS = 2**24


def loss_chunk_rows(vocab_size: int) -> int:
    """Rows of (tokens, hidden) per loss chunk, so one chunk's fp32 logits stay near 64 MB."""
    return max(1024, LOSS_CHUNK_ELEMENTS // vocab_size)


# The matmul attention kernel (engine/model/attention.py) keeps every layer's (B, heads, T, T) probabilities;
# it is only considered while they take no more than this, and the estimator counts them up to it.
MATMUL_ATTENTION_MAX_BYTES = 256 * 2**20


def attention_probs_bytes(layers: int, batch: int, heads: int, seq: int, dtype: str) -> int:
    """What the matmul attention kernel keeps beyond SDPA: the probabilities of `layers` layers."""
    return layers * batch * heads * seq * seq * (4 if dtype == "float32" else 2)


def count_parameters(config: ModelConfig) -> tuple[int, int]:
    """(total, active per token) from the config alone. Active leaves out the routed experts a token
    does not visit; the embedding counts in both, once when tied to lm_head."""
    C, inter, L = config.hidden_size, config.ffn_size, config.num_hidden_layers
    q_width, kv_width = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    attention = 2 * C * q_width + 2 * C * kv_width  # q, o + k, v
    expert = 3 * C * inter  # gate, up, down
    if config.use_moe:
        shared = config.num_shared_experts * expert + C * config.num_experts  # + router
        mlp_total = shared + config.num_experts * expert
        mlp_active = shared + config.num_experts_per_tok * expert
    else:
        mlp_total = mlp_active = expert
    embeddings = config.vocab_size * C * (1 if config.tie_word_embeddings else 2)
    fixed = embeddings + L * (attention + 2 * C) + C  # + two norms per layer and the final norm
    return fixed + L * mlp_total, fixed + L * mlp_active


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), the PaLM / nanoGPT estimate:
    6 * N + 12 * L * C * T, where N is the active parameters doing matmuls (everything active but
    the embedding lookup, with lm_head counted even when tied) and the second term is attention's
    QK^T and AV over T positions (without halving for the causal mask, as PaLM does)."""
    _, active = count_parameters(config)
    lookup = config.vocab_size * config.hidden_size
    matmul_params = active if config.tie_word_embeddings else active - lookup
    return 6.0 * matmul_params + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len
