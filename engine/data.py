"""Training data on disk: line-numbered jsonl readers and the pre-tokenized cache.

The flow is jsonl -> `build_token_cache` (tokenize once, stream to a flat token file keyed by the file's
content and the tokenizer; SFT records are checked by engine.messages and masked by engine.sft_mask) ->
`TokenCache` (memory-mapped) -> engine.blocks (fixed-shape training blocks and the resumable sampler).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.atomic import fsync_dir, write_json_atomic
from engine.messages import Conversation, RecordProblem, parse_conversation
from engine.sft_mask import SpanFinder, encode_with_masks, tokenizer_render

Kind = Literal["pretrain", "sft"]
# Bump when the cache layout or the tokenization rules change, so old caches are not reused.
# 2: the full message schema (tools, tool calls, reasoning, tool results) and meaning-based SFT masks.
CACHE_FORMAT_VERSION = 2
IGNORE_INDEX = -100  # targets with this value do not count in the loss (torch cross_entropy default)


def skip_hint(setting: str) -> str:
    """What to do about a bad line, naming the preset field (e.g. sft.on_bad_line) that changes it."""
    return f'Fix or delete that line, or set {setting} = "skip" to skip bad lines and count them'


class DataFormatError(ValueError):
    """A data file that cannot be used; the message names file and line and says what to do."""


@dataclass
class ReadStats:
    """What a reader saw: non-blank lines, usable records, skipped lines (with the first few reasons)."""

    lines: int = 0
    records: int = 0
    skipped: int = 0
    skipped_examples: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line_no: int, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < 10:
            self.skipped_examples.append((line_no, reason))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Reading jsonl


def parse_record(obj: Any, kind: Kind) -> Any:
    """The usable part of a parsed line: the text of a pretrain record, the engine.messages Conversation of
    an SFT one (roles, tools, tool calls, reasoning checked and decoded). RecordProblem says why not.
    Extra keys are allowed."""
    if kind == "sft":
        return parse_conversation(obj)
    if not isinstance(obj, dict):
        raise RecordProblem(f"expected a JSON object, got {type(obj).__name__}")
    if "text" not in obj:
        raise RecordProblem('missing key "text" (pretrain lines look like {"text": "..."})')
    if not isinstance(obj["text"], str):
        raise RecordProblem(f'"text" must be a string, got {type(obj["text"]).__name__}')
    return obj["text"]


def iter_jsonl(
    path: str | Path, kind: Kind, on_bad_line: Literal["error", "skip"] = "error", stats: ReadStats | None = None,
    **window: Any,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_no, record) of the usable lines; `window` is iter_parsed's start_line / stop_line / setting."""
    for line_no, obj, _ in iter_parsed(path, kind, on_bad_line, stats, **window):
        yield line_no, obj


def iter_parsed(
    path: str | Path,
    kind: Kind,
    on_bad_line: Literal["error", "skip"] = "error",
    stats: ReadStats | None = None,
    *,
    start_line: int = 1,
    stop_line: int | None = None,
    setting: str | None = None,
) -> Iterator[tuple[int, dict[str, Any], Any]]:
    """Yield (line_no, record, parse_record's result) for lines start_line <= line_no < stop_line (1-based,
    physical lines); the cache uses the parsed part, so SFT lines are checked and decoded only once.

    Blank lines are ignored. A bad line raises DataFormatError("file:line: ...") naming `setting` (the
    preset field holding on_bad_line, default "<kind>.on_bad_line") or, with on_bad_line="skip", is counted
    in `stats` and skipped. Lines outside the range are not parsed.
    """
    stats = stats if stats is not None else ReadStats()
    hint = skip_hint(setting or f"{kind}.on_bad_line")
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if stop_line is not None and line_no >= stop_line:
                break
            if line_no < start_line or not raw.strip():
                continue
            stats.lines += 1
            try:
                obj = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
                parsed = parse_record(obj, kind)
            except UnicodeDecodeError:
                problem = "not valid UTF-8"
            except json.JSONDecodeError as error:
                problem = f"not valid JSON ({error.msg} at column {error.colno})"
            except RecordProblem as error:
                problem = str(error)
            else:
                stats.records += 1
                yield line_no, obj, parsed
                continue
            if on_bad_line == "skip":
                stats.skip(line_no, problem)
            else:
                raise DataFormatError(f"{path}:{line_no}: {problem}. {hint}.")


# --------------------------------------------------------------------------------------------
# The token cache


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
        self.__init__(state["directory"], state["from_cache"])

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
) -> TokenCache:
    """Tokenize `data_path` once into cache_dir/<key>/; later calls with the same content and tokenizer reuse it.

    pretrain documents are <bos> text <eos>; SFT documents are the chat template's rendering with a loss
    mask on what the assistant generates (engine.sft_mask). The cache is built in a temporary folder and
    renamed into place with meta.json inside, so a crash never leaves a folder that looks complete. Errors
    name the fields of preset section `stage` (default: `kind`, which is also the stage's name).
    """
    # Imported here because engine.tokenizer reads jsonl through this module.
    from engine.tokenizer import load_tokenizer, tokenizer_fingerprint

    data_path, cache_dir, stage = Path(data_path), Path(cache_dir), stage or kind
    key = cache_key(file_digest(data_path), tokenizer_fingerprint(tokenizer_dir), kind)
    final = cache_dir / key
    if (final / "meta.json").exists():
        cache = TokenCache(final, from_cache=True)
        skipped = cache.meta["stats"]["skipped_examples"]
        if on_bad_line == "error" and skipped:  # built earlier in skip mode; do not hide the bad lines now
            line_no, reason = skipped[0]
            raise DataFormatError(f"{data_path}:{line_no}: {reason}. {skip_hint(f'{stage}.on_bad_line')}.")
        return cache

    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(cache_dir, key)
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = _write_cache(tmp, data_path, tokenizer, kind, on_bad_line, batch_size, stage)
        meta.update(tokenizer_dir=str(Path(tokenizer_dir).resolve()), build_seconds=round(time.perf_counter() - started, 3))
        write_json_atomic(tmp / "meta.json", meta)  # last: its presence is what "complete" means
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # a folder without meta.json: an interrupted or foreign build, never trusted
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same cache first; theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "meta.json").exists():
            raise
    fsync_dir(cache_dir)
    return TokenCache(final, from_cache=False)


def _remove_stale_tmp(cache_dir: Path, key: str) -> None:
    """Delete half-built folders of this key left by processes that died (they can be gigabytes)."""
    for path in cache_dir.glob(f".tmp-{key}-*"):
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _write_cache(
    tmp: Path, data_path: Path, tokenizer: Any, kind: Kind, on_bad_line: Literal["error", "skip"], batch_size: int,
    stage: str,
) -> dict[str, Any]:
    """Stream-tokenize into tmp/ (tokens.bin, mask.bin for SFT, offsets.npy); memory is bounded by one batch."""
    finder = SpanFinder(tokenizer_render(tokenizer)) if kind == "sft" else None  # probes the template once
    vocab = len(tokenizer)
    dtype = np.dtype(np.uint16 if vocab <= 65536 else np.uint32)
    stats = ReadStats()
    offsets = array("q", [0])  # 8 bytes per document, not a Python int object each
    n_masked = 0
    with open(tmp / "tokens.bin", "wb") as tok_out, open(tmp / "mask.bin", "wb") as mask_out:
        records = iter_parsed(data_path, kind, on_bad_line, stats, setting=f"{stage}.on_bad_line")
        for batch in _batched(records, batch_size):
            if finder is None:
                docs = _encode_pretrain(tokenizer, [text for _, _, text in batch])
            else:
                docs = _encode_sft(tokenizer, finder, batch, data_path)
            for ids, mask in docs:
                tok_out.write(np.asarray(ids, dtype=dtype).tobytes())
                if mask is not None:
                    mask_out.write(mask.tobytes())
                    n_masked += int(mask.sum())
                offsets.append(offsets[-1] + len(ids))
        for handle in (tok_out, mask_out):
            handle.flush()
            os.fsync(handle.fileno())
    if kind == "pretrain":
        (tmp / "mask.bin").unlink()
    if stats.records == 0:
        raise DataFormatError(
            f"{data_path}:1: no usable {kind} records ({stats.lines} non-blank lines, {stats.skipped} skipped). "
            f"Point {stage}.data_path at a {kind} jsonl file."
        )
    np.save(tmp / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "kind": kind,
        "source_path": str(data_path.resolve()),
        "source_bytes": data_path.stat().st_size,
        "vocab_size": vocab,
        "dtype": dtype.name,
        "n_docs": len(offsets) - 1,
        "n_tokens": int(offsets[-1]),
        "n_loss_tokens": n_masked if kind == "sft" else None,
        "stats": stats.to_dict(),
    }


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode_pretrain(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], None]]:
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    # The Rust backend encodes a batch on all cores; add_special_tokens=False because we add bos/eos ourselves.
    # encode_batch_fast (tokenizers >= 0.21) skips the offsets, which pretraining does not need.
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    encodings = encode(texts, add_special_tokens=False)
    return [(bos + enc.ids + eos, None) for enc in encodings]


def _encode_sft(
    tokenizer: Any, finder: SpanFinder, batch: list[tuple[int, dict, Conversation]], path: Path
) -> list[tuple[list[int], np.ndarray]]:
    """One render per conversation through the tokenizer's template, the loss mask from character offsets."""
    texts, spans = [], []
    for line_no, _, conv in batch:
        try:
            full, turn_spans = finder(conv)
        except ValueError as error:
            raise DataFormatError(
                f"{path}:{line_no}: {error}. Check the chat_template in the tokenizer's tokenizer_config.json "
                "(tokenizer.from_dir when it was adopted)."
            ) from None
        texts.append(full)
        spans.append(turn_spans)
    return encode_with_masks(tokenizer, texts, spans)
