"""Token generation as a Python generator: KV cache, temperature / top-k / top-p / repetition penalty.

`generate` yields token ids one at a time, which is exactly what a streaming chat needs; `stream_text`
turns those ids into text pieces without ever splitting a multi-byte character (Chinese text is split
across byte-level BPE tokens). `DecodeStep` is the lean inference forward generate() runs for each
token after the prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.model.transformer import CausalLM, DecoderLayer, KVCache, MoEFeedForward, rotary_tables


@dataclass
class Sampling:
    """How the next token is chosen. temperature 0 means greedy (argmax)."""

    temperature: float = 0.8
    top_k: int = 0  # keep only the k most likely tokens (0: off)
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p (1: off)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the context
    max_new_tokens: int = 256
    seed: int | None = None


def apply_repetition_penalty(logits: Tensor, context: Tensor, penalty: float) -> Tensor:
    """Divide positive / multiply negative logits of tokens present in `context` (B, S) — HF's rule."""
    if penalty == 1.0 or context.numel() == 0:
        return logits
    seen = torch.gather(logits, 1, context)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, context, seen)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Mask (to -inf) tokens outside the top-k and outside the top-p nucleus; logits (B, V) float32."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first token always stays).
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def sample_next_token(logits: Tensor, context: Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> Tensor:
    """Pick the next token (B,) from logits (B, V) given the context so far (B, S). Pure apart from the RNG."""
    logits = apply_repetition_penalty(logits.float(), context, sampling.repetition_penalty)
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@dataclass
class _DecodeLayer:
    """One decoder layer's weights as DecodeStep multiplies them: (in, out) matrices for x @ w."""

    qkv: Tensor  # (C, (nh + 2 nkv) hd): input norm weight folded in, q columns scaled by 1/sqrt(hd)
    o: Tensor  # (nh hd, C)


@dataclass
class _DenseDecodeLayer(_DecodeLayer):
    gate_up: Tensor  # (C, 2 I): post-attention norm weight folded in
    down: Tensor  # (I, C)


@dataclass
class _MoEDecodeLayer(_DecodeLayer):
    moe: MoEFeedForward  # MoE layers run their own module on the normed input...
    post_norm: Tensor  # ...scaled by this norm weight


def _fold(weights: list[Tensor], norm_weight: Tensor, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    """Matrices (out_i, C) side by side as one (C, sum out_i) for x @ w, with the preceding RMSNorm's
    weight moved into their input rows: normed @ result == cat([linear(norm_weight * normed, w) ...]).
    The first matrix is also multiplied by scale. In float32, rounded to dtype once."""
    stacked = torch.cat([w.detach().float() for w in weights])  # (sum out_i, C)
    stacked *= norm_weight.detach().float()
    stacked[:weights[0].size(0)] *= scale
    # A transposed view: contiguous (in, out) copies made single steps 3-10% faster on the CPU, but
    # the copy cost more than that over a 256-token reply.
    return stacked.to(dtype).t()


class DecodeStep:
    """The forward of one new token per sequence against a filled KVCache, for inference only: what
    generate() runs for every token after the prompt.

    At batch 1 a token costs little arithmetic (a 26M model: ~52 MFLOP), so its time goes to streaming
    the weights through the matmuls and to the fixed cost of each small op around them: dispatch,
    allocation, and code and data that the last matmul's weights pushed out of the CPU caches (an op
    right after a large matmul measured ~5x slower than the same op in a tight loop). The model's
    forward runs 37 ops a layer (views not counted) for one token; this one 18, with the same
    numbers up to float rounding (tests/engine/test_generate.py):
      - q/k/v are one matmul, gate/up another, against concatenated copies built here once;
      - those copies carry the RMSNorm weights and the attention scale 1/sqrt(hd), so a norm is a
        mean of squares, an rsqrt and a multiply, and attention needs no scaling;
      - the residual add rides on the o_proj and down_proj matmuls (addmm);
      - rotary embedding is one (hd, hd) rotation matmul for all heads, the rotation built once per
        token for all layers;
      - one query needs no mask, and SDPA reads the grouped k/v in place;
      - plain ops under inference_mode, no autograd.Function.
    The copies (q/k/v and gate/up: about 60% of a dense model's weights) live as long as this object,
    one generate() call. The model's parameters, buffers and training path are not touched.
    """

    def __init__(self, model: CausalLM, max_len: int) -> None:
        c = model.config
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        body = model.model
        weight = model.lm_head.weight
        self.dtype, device = weight.dtype, weight.device
        self.upcast = self.dtype != torch.float32  # norm statistics in float32 for bf16/fp16 models
        self.embed = body.embed_tokens.weight  # (V, C)
        self.final_norm = body.norm.weight  # not folded into lm_head: that copy would be vocab x C
        self.lm_head = weight.t()  # (C, V), a view
        # mean(x^2) + eps as one batched dot product: baddbmm(eps, x, x^T, alpha=1/C).
        self.eps = torch.full((1, 1, 1), c.rms_norm_eps, device=device)
        self.inv_width = 1.0 / c.hidden_size
        self.layers = [self._layer(layer) for layer in body.decoder_layers()]
        # x * cos + rotate_half(x) * sin == x @ (diag(cos) + swap * signed_sin), where swap moves each
        # half of hd onto the other and signed_sin carries rotate_half's minus sign. Adding the
        # structural zeros is exact.
        half = self.head_dim // 2
        self.cos, sin = rotary_tables(self.head_dim, c.rope_theta, max_len, device)  # (max_len, hd) each
        sign = torch.ones(self.head_dim, device=device)
        sign[:half] = -1.0
        self.signed_sin = sin * sign
        self.identity = torch.eye(self.head_dim, device=device)
        self.swap = self.identity.roll(-half, dims=0)  # swap[(j - half) % hd, j] = 1

    def _layer(self, layer: DecoderLayer) -> _DenseDecodeLayer | _MoEDecodeLayer:
        attn, mlp = layer.self_attn, layer.mlp
        # The attention scale is exact when hd is a power of four (16, 64, 256), else one more rounding.
        qkv = _fold([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], layer.input_layernorm.weight,
                    self.dtype, self.head_dim ** -0.5)  # (C, q + 2 kv)
        o = attn.o_proj.weight.t()  # (nh hd, C), a view
        if isinstance(mlp, MoEFeedForward):
            return _MoEDecodeLayer(qkv, o, mlp, layer.post_attention_layernorm.weight)
        gate_up = _fold([mlp.gate_proj.weight, mlp.up_proj.weight], layer.post_attention_layernorm.weight, self.dtype)
        return _DenseDecodeLayer(qkv, o, gate_up, mlp.down_proj.weight.t())

    def _normalize(self, x: Tensor) -> Tensor:
        """x / rms(x) for x (B, C), statistics in float32; the norm weight is applied by the caller."""
        xf = x.float() if self.upcast else x
        mean_square = torch.baddbmm(self.eps, xf.unsqueeze(1), xf.unsqueeze(2), alpha=self.inv_width)  # (B, 1, 1)
        normed = xf * mean_square.view(-1, 1).rsqrt_()
        return normed.to(self.dtype) if self.upcast else normed

    @torch.inference_mode()
    def __call__(self, token: Tensor, cache: KVCache) -> Tensor:
        """Logits (B, V) after token (B,) at position cache.pos; stores its k/v and advances the cache."""
        B, pos = token.size(0), cache.pos
        if pos >= cache.max_len or B != cache.batch_size:
            raise ValueError(f"KV cache holds {cache.max_len} positions for batch {cache.batch_size}; cannot add a "
                             f"token at position {pos} for batch {B}.")
        nh, nkv, hd = self.heads, self.kv_heads, self.head_dim
        heads, end = nh + 2 * nkv, pos + 1
        rotation = torch.addcmul(self.identity * self.cos[pos], self.swap, self.signed_sin[pos]).to(self.dtype)
        x = F.embedding(token, self.embed)  # (B, C)
        for keys, values, layer in zip(cache.keys, cache.values, self.layers):  # (B, nkv, max_len, hd) each
            qkv = torch.mm(self._normalize(x), layer.qkv).view(B * heads, hd)
            # One matmul rotates every head, v too (cheaper than picking q and k out first); v is then
            # read from the unrotated qkv.
            rotated = torch.mm(qkv, rotation).view(B, heads, hd)
            keys.select(2, pos).copy_(rotated[:, nh:nh + nkv])
            values.select(2, pos).copy_(qkv.view(B, heads, hd)[:, nh + nkv:])
            # One query needs no mask. SDPA measured a little faster than bmm-softmax-bmm here; the
            # scale is already in the q weights.
            y = F.scaled_dot_product_attention(rotated[:, :nh].unsqueeze(2), keys.narrow(2, 0, end),
                                               values.narrow(2, 0, end), scale=1.0, enable_gqa=nkv < nh)
            x = torch.addmm(x, y.view(B, nh * hd), layer.o)  # x + o_proj(attention); y (B, nh, 1, hd)
            h = self._normalize(x)
            if isinstance(layer, _DenseDecodeLayer):
                gate, up = torch.mm(h, layer.gate_up).chunk(2, dim=1)  # (B, I) each
                x = torch.addmm(x, F.silu(gate).mul_(up), layer.down)  # x + down_proj(silu(gate) * up)
            else:
                x = x + layer.moe((h * layer.post_norm).unsqueeze(1))[0].squeeze(1)
        cache.pos = end
        return torch.mm(self._normalize(x) * self.final_norm, self.lm_head)


@torch.no_grad()  # not inference_mode: the prompt's forward may grow the rotary tables training reuses
def generate(
    model: CausalLM,
    prompt_ids: list[int],
    sampling: Sampling,
    stop_ids: Iterable[int] = (),
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one by one until a stop id (not yielded) or max_new_tokens. With the cache the
    prompt runs through the model's forward once and every later token through DecodeStep; without
    it every token recomputes the whole context with the model's forward."""
    device = next(model.parameters()).device
    limit = model.config.max_position_embeddings
    room = max(1, limit - sampling.max_new_tokens)  # keep the newest prompt tokens that leave room to answer
    prompt_ids = list(prompt_ids)[-room:]
    stops = set(stop_ids)
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    context = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, S)
    cache = model.new_cache(1, min(limit, context.size(1) + sampling.max_new_tokens)) if use_cache else None
    was_training = model.training
    model.eval()
    try:
        decode = DecodeStep(model, cache.max_len) if cache is not None else None
        logits = model(context, cache=cache, last_only=True).logits[:, -1]  # (1, V)
        for produced in range(1, sampling.max_new_tokens + 1):
            token = sample_next_token(logits, context, sampling, generator)  # (1,)
            token_id = int(token)
            if token_id in stops:
                return
            yield token_id
            context = torch.cat([context, token[:, None]], dim=1)
            if produced == sampling.max_new_tokens or context.size(1) >= limit:
                return
            if decode is not None and cache is not None:  # both or neither: use_cache
                logits = decode(token, cache)
            else:
                logits = model(context, last_only=True).logits[:, -1]
    finally:
        model.train(was_training)


def stream_text(tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Decode incrementally: yield text as soon as it forms whole characters."""
    ids: list[int] = []
    shown = 0
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue  # a character split across tokens: wait for its remaining bytes
        if len(text) > shown:
            yield text[shown:]
            shown = len(text)
