"""Token generation as a Python generator: KV cache, temperature / top-k / top-p / repetition penalty.

`generate` yields token ids one at a time, which is exactly what a streaming chat needs; `stream_text`
turns those ids into text pieces without ever splitting a multi-byte character (Chinese text is split
across byte-level BPE tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor

from engine.model import CausalLM


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


@torch.no_grad()  # not inference_mode: tensors cached here (rotary tables) are reused by training
def generate(
    model: CausalLM,
    prompt_ids: list[int],
    sampling: Sampling,
    stop_ids: Iterable[int] = (),
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one by one until a stop id (not yielded) or max_new_tokens."""
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
        feed = context
        for _ in range(sampling.max_new_tokens):
            logits = model(feed if use_cache else context, cache=cache, last_only=True).logits[:, -1]  # (1, V)
            token = sample_next_token(logits, context, sampling, generator)  # (1,)
            if int(token) in stops:
                return
            yield int(token)
            context = torch.cat([context, token[:, None]], dim=1)
            feed = token[:, None]
            if context.size(1) >= limit:
                return
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
