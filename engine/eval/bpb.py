"""Bits per byte on held-out text: a model's loss in units that do not depend on its tokenizer.

A loss is nats per token, and tokens differ between tokenizers (a 6,400-token vocabulary cuts text finer than a
32,000-token one), so two runs' losses cannot be compared. Bits per byte can: the nats summed over the predicted
tokens, divided by ln 2 times the UTF-8 bytes those tokens spell. Special tokens (`<s>`, `</s>`, `<|im_end|>` ...)
spell no text: they are neither counted nor predicted for the score.

A token's bytes: in a byte-level BPE vocabulary (the built-in tokenizer, minimind's) every entry is written one
character per byte (GPT-2's byte table), so its length is its byte count, exactly; any other tokenizer is asked
to decode the token alone, which is exact for whole characters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.hardware.device import Precision


@dataclass(frozen=True)
class BitsPerByte:
    nats: float  # summed over the scored tokens
    tokens: int  # tokens scored (predicted, not special)
    bytes: int  # UTF-8 bytes those tokens spell

    @property
    def bpb(self) -> float:
        return self.nats / (math.log(2) * self.bytes) if self.bytes else float("nan")

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")

    def to_dict(self) -> dict[str, float | int]:
        return {"bpb": self.bpb, "nats": self.nats, "tokens": self.tokens, "bytes": self.bytes,
                "nats_per_token": self.nats_per_token}


def token_bytes(tokenizer: Any) -> torch.Tensor:
    """(vocab,) int64: the UTF-8 bytes each token id spells; 0 for special and added control tokens."""
    size = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    spec = _tokenizer_spec(tokenizer)
    lengths = torch.zeros(size, dtype=torch.int64)
    if spec is not None and _byte_level(spec):
        for piece, token_id in spec["model"]["vocab"].items():
            if token_id < size:
                lengths[token_id] = len(piece)  # one character per byte
        for added in spec.get("added_tokens", []):
            if added["id"] < size:
                lengths[added["id"]] = 0 if added.get("special", True) else len(added["content"].encode("utf-8"))
    else:
        for token_id in range(size):
            lengths[token_id] = len(tokenizer.decode([token_id]).encode("utf-8"))
    for token_id in special:
        if 0 <= token_id < size:
            lengths[token_id] = 0
    return lengths


@torch.no_grad()
def bits_per_byte(model: torch.nn.Module, sequences: Iterable[Sequence[int]], lengths: torch.Tensor,
                  precision: Precision, batch_size: int = 8, max_len: int = 512) -> BitsPerByte:
    """Score every token of each sequence but its first (the first has no context). Sequences longer than
    `max_len` are cut into windows of max_len that overlap by one token, so every token is predicted once."""
    was_training = model.training
    model.eval()
    windows = [w for ids in sequences for w in _windows(list(ids), max_len)]
    nats, tokens, n_bytes = 0.0, 0, 0
    device = precision.device
    table = lengths.to(device)
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        width = max(len(w) for w in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        valid = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, window in enumerate(batch):
            ids[row, :len(window)] = torch.tensor(window)
            valid[row, :len(window)] = True
        ids, valid = ids.to(device), valid.to(device)
        inputs, targets, scored = ids[:, :-1], ids[:, 1:], valid[:, 1:]
        with precision.autocast():
            logits = model(inputs).logits  # (B, T-1, V)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        target_bytes = table[targets]
        counted = scored & (target_bytes > 0)
        nats -= float(logp[counted].sum())
        tokens += int(counted.sum())
        n_bytes += int(target_bytes[counted].sum())
    model.train(was_training)
    return BitsPerByte(nats, tokens, n_bytes)


def _windows(ids: list[int], max_len: int) -> list[list[int]]:
    if len(ids) < 2:
        return []
    step = max_len - 1
    return [ids[start:start + max_len] for start in range(0, len(ids) - 1, step)]


def _tokenizer_spec(tokenizer: Any) -> dict[str, Any] | None:
    """The tokenizer's own tokenizer.json (from its backend, as engine.data.fast_bpe reads it), None without one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _byte_level(spec: dict[str, Any]) -> bool:
    """A BPE model whose decoder is ByteLevel: vocabulary entries are written in GPT-2's byte characters."""
    decoder = spec.get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
    return (spec.get("model") or {}).get("type") == "BPE" and "ByteLevel" in kinds
