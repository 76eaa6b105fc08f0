"""The transformer: a Llama-style decoder, optionally with mixture-of-experts feed-forwards.

RMSNorm, rotary position embeddings, grouped-query attention through SDPA, SwiGLU feed-forwards,
no biases, tied input/output embeddings. Parameter names are exactly Hugging Face Llama's
(`model.layers.3.self_attn.q_proj.weight`, `lm_head.weight`, ...), so a dense model's state_dict
loads into `transformers.LlamaForCausalLM` as is and export is a plain save. MoE layers keep the
same outer names and add, under `model.layers.{i}.mlp.`:
    gate.weight                                   the router, (num_experts, hidden)
    experts.{j}.{gate,up,down}_proj.weight        routed SwiGLU experts
    shared_experts.{j}.{gate,up,down}_proj.weight experts every token passes through
(minimind's MoE uses the same router and expert names.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from engine.config import ModelConfig
from engine.hardware.flops import count_parameters, flops_per_token, loss_chunk_rows
from engine.model.attention import CAUSAL_KERNELS
from engine.model.kernels import linear_cross_entropy, rms_norm, swiglu_down

__all__ = ["CausalLM", "KVCache", "ModelOutput", "count_parameters", "flops_per_token", "rotary_tables"]


@dataclass
class ModelOutput:
    logits: Tensor | None = None  # (B, T, vocab) or (B, 1, vocab), in the compute dtype; None with targets
    loss: Tensor | None = None  # mean cross-entropy (+ aux_loss), only with targets
    aux_loss: Tensor | None = None  # MoE load-balancing loss, only in training


class KVCache:
    """Keys and values of the tokens seen so far, preallocated per layer, plus how many there are."""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = 0  # tokens already stored; the next forward writes at pos..pos+t

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this layer's new k/v (B, nkv, t, hd); return all of them so far (B, nkv, pos+t, hd)."""
        end = self.pos + k.size(2)
        self.keys[layer][:, :, self.pos:end] = k
        self.values[layer][:, :, self.pos:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: Tensor) -> Tensor:
        # float32 statistics, HF's rounding; saves only x and one float per row (engine/model/kernels.py).
        return rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions 0..n, grown on demand so a tiny model never holds 32k rows."""

    cos: Tensor  # buffers (n, head_dim), registered in __init__
    sin: Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.max_positions = config.max_position_embeddings
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    def forward(self, start: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos, sin for positions start..start+length, each (length, head_dim) in float32."""
        end = start + length
        # model.to(bf16) casts buffers too; rebuild in float32 then, since bf16 angles are far off.
        if self.cos.size(0) < end or self.cos.device != device or self.cos.dtype != torch.float32:
            size = max(end, min(2 ** math.ceil(math.log2(end)), self.max_positions))
            self.cos, self.sin = rotary_tables(self.head_dim, self.theta, size, device)
        return self.cos[start:end], self.sin[start:end]


def rotary_tables(head_dim: int, theta: float, length: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin (length, head_dim) in float32 for positions 0..length; pure, so the decode path
    (engine/model/generate.py) builds exactly the values the training forward uses."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    freqs = torch.outer(torch.arange(length, device=device).float(), inv_freq)  # (length, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (length, hd): HF's layout, halves not interleaved
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, heads, T, hd) rotated by position; cos/sin (T, hd) broadcast over batch and heads."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        hidden, kv_width = config.hidden_size, config.num_key_value_heads * config.head_dim
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_width, bias=False)
        self.v_proj = nn.Linear(hidden, kv_width, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.kernel = "sdpa"  # for plain causal training; set by CausalLM.set_attention_kernel (engine/model/attention.py)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, S, hd) with S = pos + T
        groups = self.num_heads // self.num_kv_heads
        # No mask and T > 1 means no earlier tokens: plain causal. A single new token sees everything.
        causal = mask is None and T > 1
        dropout = self.dropout if self.training else 0.0
        if causal and cache is None:
            y = CAUSAL_KERNELS[self.kernel](q, k, v, dropout)  # (B, nh, T, hd)
        else:
            # SDPA reads grouped k/v itself (enable_gqa): faster than expanding them to every query head
            # on the CPU and on CUDA (bench/RESULTS.md), and autograd keeps the nkv-head k/v only.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout,
                                               enable_gqa=groups > 1)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, nh*hd)
        return self.o_proj(y)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # The fused tail keeps gate and up for backward, not silu(gate) nor the product.
        return swiglu_down(self.gate_proj(x), self.up_proj(x), self.down_proj.weight)


class MoEFeedForward(nn.Module):
    """Top-k routed SwiGLU experts plus always-on shared experts, with a Switch-style balance loss."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.aux_loss_coef = config.moe_aux_loss_coef
        hidden, inter = config.hidden_size, config.ffn_size
        self.gate = nn.Linear(hidden, config.num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(FeedForward(hidden, inter) for _ in range(config.num_experts))
        self.shared_experts = nn.ModuleList(FeedForward(hidden, inter) for _ in range(config.num_shared_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # (N, C)
        probs = self.gate(flat).float().softmax(dim=-1)  # (N, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k) each
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(flat)
        # Each expert runs only on the tokens routed to it (no dense all-experts compute).
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.nonzero(chosen == e, as_tuple=True)  # (n_e,) each
            if token_idx.numel() == 0:
                continue
            y = expert(flat[token_idx]) * weights[token_idx, slot, None]  # (n_e, C)
            out.index_add_(0, token_idx, y.to(out.dtype))
        for expert in self.shared_experts:
            out = out + expert(flat).to(out.dtype)
        aux = None
        if self.training and self.aux_loss_coef > 0:
            # f_i: share of the N*k token-slots sent to expert i (a count, no gradient);
            # P_i: mean router probability of expert i (carries the gradient). Minimal when uniform.
            f = F.one_hot(chosen, self.num_experts).sum(dim=(0, 1)).float() / chosen.numel()  # (E,)
            aux = self.aux_loss_coef * self.num_experts * (f * probs.mean(dim=0)).sum()
        return out.view(B, T, C), aux


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        dense = not config.use_moe
        self.mlp = FeedForward(config.hidden_size, config.ffn_size) if dense else MoEFeedForward(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: KVCache | None) -> tuple[Tensor, Tensor | None]:
        x = x + self.resid_dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache))
        h, aux = self.mlp(self.post_attention_layernorm(x)), None
        if isinstance(self.mlp, MoEFeedForward):
            h, aux = h  # MoE also returns its load-balancing loss
        return x + self.resid_dropout(h), aux


class DecoderModel(nn.Module):
    """The body (HF's `model.` prefix): embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.activation_checkpointing = False  # set by the trainer from runtime.activation_checkpointing

    def decoder_layers(self) -> Iterator[DecoderLayer]:
        """self.layers with their type: nn.ModuleList is not generic, a type checker sees plain Modules."""
        return cast(Iterator[DecoderLayer], iter(self.layers))

    def forward(self, input_ids: Tensor, cache: KVCache | None) -> tuple[Tensor, Tensor | None]:
        B, T = input_ids.shape
        pos = 0 if cache is None else cache.pos
        if cache is not None and (pos + T > cache.max_len or B != cache.batch_size):
            raise ValueError(
                f"KV cache holds {cache.max_len} positions for batch {cache.batch_size}; cannot add {T} tokens "
                f"at position {pos} for batch {B}. Create a larger cache with new_cache(batch_size, max_len)."
            )
        cos, sin = self.rotary_emb(pos, T, input_ids.device)  # (T, hd) each
        mask = None
        if pos > 0 and T > 1:
            # New query i sits at position pos+i and may see keys 0..pos+i (SDPA's is_causal would
            # align the triangle to the top-left corner, wrong when there are earlier keys).
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=input_ids.device).tril(diagonal=pos)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        aux_total = None
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                # Non-reentrant checkpointing: keeps x, recomputes the layer (dropout masks replayed
                # from the saved RNG state) when backward reaches it.
                x, aux = checkpoint(layer, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x, aux = layer(x, cos, sin, mask, cache)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        if cache is not None:
            cache.pos = pos + T
        return self.norm(x), aux_total


class CausalLM(nn.Module):
    """Decoder + output projection; `forward` returns the loss with targets, else the logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter under both names
        # Rows of (B*T, C) per loss chunk, so one chunk's fp32 logits stay near 64 MB.
        self.loss_chunk_rows = loss_chunk_rows(config.vocab_size)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # HF's initializer_range=0.02 for every matrix; RMSNorm weights start at ones in RMSNorm itself.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, input_ids: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, loss_tokens: Tensor | None = None) -> ModelOutput:
        """input_ids (B, T). targets (B, T) with IGNORE_INDEX (engine.data.blocks) for positions without loss: returns loss, no
        logits. Without targets: logits (B, T, vocab), or (B, 1, vocab) for the last position only.
        `loss_tokens`: divide the summed loss by this target count instead of the batch's own (see
        engine/train/step.py: the step's loss is a mean over all its tokens, whatever the world size)."""
        hidden, aux_loss = self.model(input_ids, cache)  # (B, T, C)
        if targets is None:
            if last_only:
                hidden = hidden[:, -1:]  # (B, 1, C)
            return ModelOutput(logits=self.lm_head(hidden), aux_loss=aux_loss)
        B, T, C = hidden.shape
        loss = linear_cross_entropy(
            hidden.reshape(B * T, C), self.lm_head.weight, targets.reshape(B * T), self.loss_chunk_rows, loss_tokens
        )
        if aux_loss is not None and loss_tokens is None:  # with loss_tokens the step weighs the two parts itself
            loss = loss + aux_loss
        return ModelOutput(loss=loss, aux_loss=aux_loss)

    def set_attention_kernel(self, kernel: str) -> None:
        """Which causal attention kernel training uses in every layer: "sdpa" or "matmul"."""
        for layer in self.model.decoder_layers():
            layer.self_attn.kernel = kernel

    def new_cache(self, batch_size: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for generation; device and dtype default to the model's."""
        weight = self.lm_head.weight
        c = self.config
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_len, c.head_dim,
                       device=device or weight.device, dtype=dtype or weight.dtype)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())
