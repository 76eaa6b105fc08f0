"""The pre-tokenized cache of a data file: built once, memory-mapped by every run that trains on it.

The flow is jsonl (engine.data.jsonl) -> `build_token_cache` (tokenize once, stream to a flat token file keyed by the file's
content and the tokenizer; SFT records are checked by engine.data.messages and masked by engine.data.sft_mask) ->
`TokenCache` (memory-mapped) -> engine.data.blocks (fixed-shape training blocks and the resumable sampler).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from engine.atomic import publish_dir, remove_dead_temporaries, write_json_atomic
from engine.data.jsonl import Kind, check_data_file, skip_hint
from engine.disk_full import writing
from engine.errors import DataError
from engine.locks import FileLock, split_holder

if TYPE_CHECKING:
    from engine.data.cache_build import Progress

# Bump when the cache layout or the tokenization rules change, so old caches are not reused.
# 2: the full message schema (tools, tool calls, reasoning, tool results) and meaning-based SFT masks.
CACHE_FORMAT_VERSION = 2


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Content hash streamed in 1 MiB chunks (a renamed or touched file keeps its cache)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class TokenCache:
    """A built cache opened read-only with np.memmap: memory is bounded by the page cache, not the corpus."""

    def __init__(self, directory: Path, from_cache: bool = False):
        self.dir = Path(directory)
        self.meta: dict[str, Any] = json.loads((self.dir / "meta.json").read_text(encoding="utf-8"))
        self.from_cache = from_cache
        self.offsets = np.load(self.dir / "offsets.npy")
        self.tokens = self._map("tokens.bin", np.dtype(self.meta["dtype"]))
        self.mask = self._map("mask.bin", np.dtype(np.uint8)) if self.meta["kind"] == "sft" else None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into spawn-started DataLoader workers: send the folder, not a copy of the mapped corpus.
        return {"directory": self.dir, "from_cache": self.from_cache}

    def __setstate__(self, state: dict[str, Any]) -> None:
        TokenCache.__init__(self, state["directory"], state["from_cache"])

    def _map(self, name: str, dtype: np.dtype) -> np.ndarray:
        if self.meta["n_tokens"] == 0:  # mmap refuses empty files
            return np.zeros(0, dtype=dtype)
        return np.memmap(self.dir / name, dtype=dtype, mode="r", shape=(self.meta["n_tokens"],))

    @property
    def kind(self) -> Kind:
        return self.meta["kind"]

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    def doc(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], None if self.mask is None else self.mask[a:b]


def cache_key(file_hash: str, tokenizer_fp: str, kind: Kind) -> str:
    text = f"{file_hash}|{tokenizer_fp}|{kind}|v{CACHE_FORMAT_VERSION}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def build_token_cache(
    data_path: str | Path,
    tokenizer_dir: str | Path,
    kind: Kind,
    cache_dir: str | Path,
    on_bad_line: Literal["error", "skip"] = "error",
    batch_size: int = 1000,
    stage: str | None = None,
    workers: int | None = None,
    range_bytes: int | None = None,
    progress: Progress | None = None,
    on_wait: Callable[[str], object] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> TokenCache:
    """Tokenize `data_path` once into cache_dir/<key>/; later calls with the same content and tokenizer reuse it.

    pretrain documents are <bos> text <eos>; SFT documents are the chat template's rendering with a loss
    mask on what the assistant generates (engine.data.sft_mask). The cache is built in a temporary folder and
    renamed into place with meta.json inside, so a crash never leaves a folder that looks complete. Errors
    name the fields of preset section `stage` (default: `kind`, which is also the stage's name).

    `workers` processes tokenize byte ranges of `range_bytes` in parallel (engine.data.cache_build; default: all
    cores but one, one process below 64 MiB; ranges of up to 32 MiB, four per worker at least); the cache is
    the same bytes for any number of workers.
    `progress(bytes_done, bytes_total)` is called as the build advances.

    One process builds a given cache at a time (an flock on cache_dir/.lock-<key>, dropped by the kernel if
    its holder dies): another run needing the same cache calls `on_wait(message)` once, waits, then uses
    the finished cache instead of tokenizing the file a second time; `cancelled()` true gives the wait up
    (engine.locks.WaitCancelled).
    """
    # Imported here because both modules read jsonl through this one.
    from engine.data.tokenizer import tokenizer_fingerprint

    data_path, cache_dir, stage = Path(data_path), Path(cache_dir), stage or kind
    check_data_file(data_path, f"{stage}.data_path")
    key = cache_key(file_digest(data_path), tokenizer_fingerprint(tokenizer_dir), kind)
    final = cache_dir / key
    if (final / "meta.json").exists():  # a published cache never changes: no lock needed to read it
        return _reuse(final, data_path, on_bad_line, stage)
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(cache_dir / f".lock-{key}", "token cache build")

    def waiting(holder: str) -> None:
        if on_wait:
            on_wait(f"waiting for another process (pid {split_holder(holder)[0]}) building the token cache of "
                    f"{data_path} in {final}; this run uses it once it is done")

    lock.acquire(wait=waiting, cancelled=cancelled)
    try:
        if (final / "meta.json").exists():  # the process we waited for built it
            return _reuse(final, data_path, on_bad_line, stage)
        return _build(data_path, Path(tokenizer_dir), kind, cache_dir, key, on_bad_line, batch_size, stage, workers,
                      range_bytes, progress)
    finally:
        lock.release()


def _reuse(final: Path, data_path: Path, on_bad_line: Literal["error", "skip"], stage: str) -> TokenCache:
    cache = TokenCache(final, from_cache=True)
    skipped = cache.meta["stats"]["skipped_examples"]
    if on_bad_line == "error" and skipped:  # built earlier in skip mode; do not hide the bad lines now
        line_no, reason = skipped[0]
        raise DataError(f"{data_path}:{line_no}: {reason}. {skip_hint(f'{stage}.on_bad_line')}.")
    return cache


def _build(data_path: Path, tokenizer_dir: Path, kind: Kind, cache_dir: Path, key: str,
           on_bad_line: Literal["error", "skip"], batch_size: int, stage: str, workers: int | None,
           range_bytes: int | None, progress: Progress | None) -> TokenCache:
    """Tokenize into a temporary sibling and publish it as cache_dir/<key> (the caller holds the build lock)."""
    from engine.data.cache_build import RangeEncoder, default_workers, write_ranges
    from engine.data.tokenizer import load_tokenizer

    final = cache_dir / key
    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_dir)
    remove_dead_temporaries(cache_dir, f".tmp-{key}-*")  # half-built by processes that died
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    workers = workers or default_workers(data_path.stat().st_size)
    vocab = len(tokenizer)
    dtype = np.dtype(np.uint16 if vocab <= 65536 else np.uint32)
    encoder = RangeEncoder(tokenizer, kind, on_bad_line, skip_hint(f"{stage}.on_bad_line"), dtype, batch_size, data_path)
    try:
        stats, lengths, n_masked = write_ranges(encoder, tmp, tokenizer_dir, workers, range_bytes, progress)
        if stats.records == 0:
            raise DataError(
                f"{data_path}:1: no usable {kind} records ({stats.lines} non-blank lines, {stats.skipped} skipped). "
                f"Point {stage}.data_path at a {kind} jsonl file."
            )
        if kind == "pretrain":
            (tmp / "mask.bin").unlink()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
        with writing(tmp / "offsets.npy"):
            np.save(tmp / "offsets.npy", offsets)
        meta = {
            "format_version": CACHE_FORMAT_VERSION, "kind": kind, "source_path": str(data_path.resolve()),
            "source_bytes": data_path.stat().st_size, "vocab_size": vocab, "dtype": dtype.name, "n_docs": len(lengths),
            "n_tokens": int(offsets[-1]), "n_loss_tokens": n_masked if kind == "sft" else None, "stats": stats.to_dict(),
            "tokenizer_dir": str(tokenizer_dir.resolve()), "workers": workers,
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        write_json_atomic(tmp / "meta.json", meta)  # last: its presence is what "complete" means
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists() and not (final / "meta.json").exists():  # an interrupted or foreign build: never trusted
        shutil.rmtree(final)
    # The lock keeps other builders of this key out; keep_existing covers one that does not take it (an older
    # engine on a shared cache folder): a cache published meanwhile is as good as ours.
    publish_dir(tmp, final, keep_existing=True)
    return TokenCache(final, from_cache=False)
