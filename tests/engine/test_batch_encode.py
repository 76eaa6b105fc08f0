"""engine.data.batch_encode: the faster of two encoders that must agree, chosen by timing them."""

from __future__ import annotations

import time

import numpy as np

from engine.data import batch_encode
from engine.data.batch_encode import FasterOf, batch_encoder
from engine.data.tokenizer import load_tokenizer


def _encoder(answer: bytes, delay: float, calls: list[str], name: str):
    def encode(texts, spans):
        calls.append(name)
        time.sleep(delay)
        return [(answer, None) for _ in texts]

    return encode


def test_the_faster_encoder_is_used_between_timed_batches() -> None:
    """Guards against the cache build sticking to the slower path: on a corpus where the tokenizer's own call
    is faster (long unrepeated text), it must be the one used between the timed batches, and vice versa."""
    for fast_delay, ref_delay, expect in ((0.0, 0.02, "fast"), (0.02, 0.0, "reference")):
        calls: list[str] = []
        chooser = FasterOf(_encoder(b"x", fast_delay, calls, "fast"), _encoder(b"x", ref_delay, calls, "reference"))
        for _ in range(batch_encode.FIRST_TRIALS + 5):
            assert chooser(["t"], None) == [(b"x", None)]
        untimed = calls[2 * batch_encode.FIRST_TRIALS:]
        assert untimed == [expect] * 5
        assert chooser.trials[expect] == batch_encode.FIRST_TRIALS


def test_a_disagreeing_fast_encoder_is_never_used_again() -> None:
    """Guards against a wrong fast path writing a cache: a timed batch where the two disagree returns the
    tokenizer's own encoding and the fast one is dropped for the rest of the build."""
    calls: list[str] = []
    chooser = FasterOf(_encoder(b"wrong", 0.0, calls, "fast"), _encoder(b"right", 0.0, calls, "reference"))
    for _ in range(300):
        assert chooser(["t"], None) == [(b"right", None)]
    assert chooser.fast is None and calls.count("fast") == 1


def test_the_tokenizer_own_calls_are_used_when_asked_or_when_fast_bpe_cannot(builtin_dir) -> None:
    """Guards against MINIMIND_STUDIO_REFERENCE_ENCODE=1 (reference_only) still timing the fast path."""
    tok = load_tokenizer(builtin_dir)
    assert isinstance(batch_encoder(tok, "pretrain", np.dtype(np.uint16)), FasterOf)
    assert not isinstance(batch_encoder(tok, "pretrain", np.dtype(np.uint16), reference_only=True), FasterOf)
