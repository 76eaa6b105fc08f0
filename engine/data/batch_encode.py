"""Encoding one batch of documents for the token cache: the tokenizer's own calls, or engine.data.fast_bpe.

Both give the same bytes; which is faster depends on the text. fast_bpe wins where text repeats (words,
names, role headers: 2-3x on the benchmark's files) and loses where it does not (a Chinese corpus is long
runs of ideographs that rarely recur whole, and running each through the BPE model one call at a time
costs more than the tokenizer's own batch call). So `FasterOf` times the two on the same batches, at the
start and every `RETRY_EVERY` batches, and uses the faster in between; each timed batch is also a check
that the two agree, and at a disagreement the tokenizer's own encoding is used for the rest of the build.

A batch encoder takes (texts, spans) and returns, per document, (ids as bytes of the cache's dtype, the
loss mask as uint8 bytes or None). `spans` (SFT only) are the learned character spans of each text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.data.fast_bpe import FastByteLevelBPE
from engine.data.sft_mask import encode_with_masks

Spans = list[list[tuple[int, int]]]
Encoded = list[tuple[bytes, bytes | None]]
BatchEncoder = Callable[[list[str], Spans | None], Encoded]
FIRST_TRIALS = 2  # batches timed both ways at the start (they also warm fast_bpe's caches)
RETRY_EVERY = 100  # then one batch in this many (1%), as the text changes along the file
MARGIN = 0.9  # fast_bpe must take under 90% of the tokenizer's time: a near tie is noise, and then the tokenizer's
# own call is the safer choice (on a Chinese-heavy file fast_bpe was ~10% slower, and one noisy trial in its
# favour cost 100 batches)


def reference_encoder(tokenizer: Any, dtype: np.dtype, bos: list[int], eos: list[int]) -> BatchEncoder:
    """The tokenizer's own batch encode: pretrain documents framed by bos/eos, SFT masks from character offsets."""
    backend = tokenizer.backend_tokenizer
    # encode_batch_fast (tokenizers >= 0.21) skips the offsets, which pretraining does not need.
    fast_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def encode(texts: list[str], spans: Spans | None) -> Encoded:
        if spans is None:  # add_special_tokens=False: bos/eos are added here
            return [(np.asarray(bos + enc.ids + eos, dtype=dtype).tobytes(), None)
                    for enc in fast_batch(texts, add_special_tokens=False)]
        return [(np.asarray(ids, dtype=dtype).tobytes(), mask.tobytes())
                for ids, mask in encode_with_masks(tokenizer, texts, spans)]

    return encode


def fast_encoder(fast: FastByteLevelBPE, dtype: np.dtype, bos: list[int], eos: list[int]) -> BatchEncoder:
    head, tail = np.asarray(bos, dtype=dtype).tobytes(), np.asarray(eos, dtype=dtype).tobytes()

    def encode(texts: list[str], spans: Spans | None) -> Encoded:
        if spans is None:
            return [(head + ids + tail, None) for ids in fast.encode(texts)]
        return [(ids, _mask(text, turn_spans, lengths))
                for text, turn_spans, (ids, lengths) in zip(texts, spans, fast.encode_with_lengths(texts))]

    return encode


def _mask(text: str, spans: list[tuple[int, int]], lengths: bytes) -> bytes:
    """The loss mask in UTF-8 bytes: token byte ranges from their lengths, spans moved from characters to bytes.
    A token holding part of a character lies inside a span exactly when that character does, as with the
    tokenizer's character offsets (engine.data.sft_mask.mask_from_offsets, which compares every token with every
    span: these tokens are contiguous, non-empty and in order, so those inside a span are one run, found by two
    binary searches: an SFT build ran 7-8% faster than through mask_from_offsets on byte offsets)."""
    sizes = np.frombuffer(lengths, dtype=np.uint32)
    ends = np.cumsum(sizes, dtype=np.int64)
    starts = ends - sizes
    mask = np.zeros(len(sizes), dtype=np.uint8)
    for a, b in spans:
        first = int(np.searchsorted(starts, len(text[:a].encode("utf-8"))))
        stop = int(np.searchsorted(ends, len(text[:b].encode("utf-8")), side="right"))
        mask[first:stop] = 1
    return mask.tobytes()


class FasterOf:
    """Two batch encoders that must agree: the faster one, chosen by timing both on the same batches."""

    def __init__(self, fast: BatchEncoder, reference: BatchEncoder) -> None:
        self.fast: BatchEncoder | None = fast
        self.reference = reference
        self.chosen = fast
        self.batches = 0
        self.trials = {"fast": 0, "reference": 0}  # which won each timed batch (for tests and the curious)

    def __call__(self, texts: list[str], spans: Spans | None) -> Encoded:
        self.batches += 1
        if self.fast is None:
            return self.reference(texts, spans)
        if self.batches > FIRST_TRIALS and self.batches % RETRY_EVERY:
            return self.chosen(texts, spans)
        started = time.perf_counter()
        want = self.reference(texts, spans)
        middle = time.perf_counter()
        got = self.fast(texts, spans)
        fast_won = time.perf_counter() - middle < MARGIN * (middle - started)
        if got != want:  # a bug in the fast path: never use it again
            self.fast, self.chosen = None, self.reference
            return want
        self.chosen = self.fast if fast_won else self.reference
        self.trials["fast" if fast_won else "reference"] += 1
        return want


def batch_encoder(tokenizer: Any, kind: str, dtype: np.dtype, reference_only: bool = False) -> BatchEncoder:
    """The cache's batch encoder for this tokenizer: FasterOf(fast_bpe, the tokenizer) where fast_bpe can
    reproduce the tokenizer, else the tokenizer's own calls."""
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    bos, eos = [] if bos_id is None else [bos_id], [] if eos_id is None else [eos_id]
    reference = reference_encoder(tokenizer, dtype, bos, eos)
    fast = None if reference_only else FastByteLevelBPE.for_tokenizer(tokenizer, dtype.itemsize, lengths=kind == "sft")
    return reference if fast is None else FasterOf(fast_encoder(fast, dtype, bos, eos), reference)
