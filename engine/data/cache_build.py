"""Writing a token cache: the jsonl file cut into byte ranges at line starts, tokenized by worker processes,
merged in file order.

Every range goes through the same `RangeEncoder`, in a worker or in this process, and the merge only
concatenates their outputs in file order, so a parallel build writes the same bytes as a one-process one
(tested). Workers write their tokens to part files next to the cache and return the document lengths and
read statistics, so memory is bounded by the ranges in flight (a window of two per worker), never by the
file. Line numbers in errors are absolute: a range counts its physical lines, and the merge, which sees the
ranges in order, adds the lines of the ranges before it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from engine.data.batch_encode import batch_encoder
from engine.data.chat_render import CheckedRender
from engine.data.jsonl import Kind, ReadStats, parse_line
from engine.data.messages import RecordProblem
from engine.data.sft_mask import SpanFinder, tokenizer_render
from engine.disk_full import writing
from engine.errors import DataError

RANGE_BYTES = 32 << 20  # one task: big enough that per-task overhead vanishes, small enough to balance cores
PARALLEL_MIN_BYTES = 64 << 20  # below this, starting workers (each imports transformers, ~1-2 s) costs more than it saves
REFERENCE_ENV = "MINIMIND_STUDIO_REFERENCE_ENCODE"
"""Set to 1 to build with the libraries' own calls, apply_chat_template and encode_batch, instead of
engine.data.chat_render and engine.data.fast_bpe (the same bytes, two to three times slower): for benchmarks,
and a way out should a fast path ever disagree with a tokenizer."""
Progress = Callable[[int, int], None]
"""progress(bytes_done, bytes_total), called as the build advances."""


@dataclass
class RangeResult:
    """What one byte range produced, with line numbers counted from the range's first line (1)."""

    lines: int = 0  # physical lines, blank ones included: the next range's line numbers start after them
    stats: ReadStats = field(default_factory=ReadStats)
    error: tuple[int, str] | None = None  # (line, "problem. hint"): the first bad line in "error" mode
    lengths: array = field(default_factory=lambda: array("q"))  # tokens per document, in file order
    n_masked: int = 0


def default_workers(size: int) -> int:
    """All cores but one, one process for files too small to pay for starting workers."""
    if size < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min((os.cpu_count() or 2) - 1, -(-size // RANGE_BYTES)))


def line_ranges(path: Path, range_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges [start, end) covering the file, each starting at the beginning of a line."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as handle:
        while bounds[-1] + range_bytes < size:
            handle.seek(bounds[-1] + range_bytes - 1)  # -1: a range may end exactly at a newline
            handle.readline()
            if handle.tell() >= size:
                break
            bounds.append(handle.tell())
    return list(zip(bounds, bounds[1:] + [size]))


class RangeEncoder:
    """Tokenizes the records of one byte range of a jsonl file, writing tokens (and SFT masks) as it goes."""

    def __init__(self, tokenizer: Any, kind: Kind, on_bad_line: Literal["error", "skip"], hint: str,
                 dtype: np.dtype, batch_size: int, data_path: Path) -> None:
        """`hint` ends a bad line's message (engine.data.jsonl.skip_hint of the preset field holding on_bad_line)."""
        self.tokenizer, self.kind, self.on_bad_line, self.dtype = tokenizer, kind, on_bad_line, dtype
        self.hint, self.batch_size, self.data_path = hint, batch_size, data_path
        reference = os.environ.get(REFERENCE_ENV) == "1"
        self.finder = None  # SFT: renders each conversation and finds its learned spans (probes the template once)
        if kind == "sft":
            self.finder = SpanFinder(tokenizer_render(tokenizer) if reference else CheckedRender(tokenizer))
        self.encode_batch = batch_encoder(tokenizer, kind, dtype, reference_only=reference)

    def encode(self, start: int, end: int, tok_out: BinaryIO, mask_out: BinaryIO,
               progress: Callable[[int], None] | None = None) -> RangeResult:
        result = RangeResult()
        batch: list[tuple[int, Any]] = []
        for line_no, raw, at in self._lines(start, end, result):
            result.stats.lines += 1
            got = parse_line(raw, self.kind, first=at == 0)
            if isinstance(got, str):
                if self.on_bad_line == "skip":
                    result.stats.skip(line_no, got)
                    continue
                result.error = (line_no, f"{got}. {self.hint}.")
                return result  # like the one-pass reader: stop at the first bad line, before encoding its batch
            result.stats.records += 1
            batch.append((line_no, got[1]))
            if len(batch) == self.batch_size:
                if not self._flush(batch, result, tok_out, mask_out):
                    return result
                batch = []
                if progress:
                    progress(at + len(raw))
        if batch:
            self._flush(batch, result, tok_out, mask_out)
        return result

    def _lines(self, start: int, end: int, result: RangeResult) -> Iterator[tuple[int, bytes, int]]:
        """(line number in the range, raw line, its byte offset in the file) of the non-blank lines."""
        with open(self.data_path, "rb") as handle:
            handle.seek(start)
            at = start
            while at < end and (raw := handle.readline()):
                result.lines += 1
                if raw.strip():
                    yield result.lines, raw, at
                at += len(raw)

    def _flush(self, batch: list[tuple[int, Any]], result: RangeResult, tok_out: BinaryIO, mask_out: BinaryIO) -> bool:
        """Encode and write one batch; False (with result.error set) when the template fails on a record."""
        if self.finder is None:
            docs = self.encode_batch([t for _, t in batch], None)
        else:
            texts, spans = [], []
            for line_no, conv in batch:
                try:
                    full, turn_spans = self.finder(conv)
                except RecordProblem as error:
                    result.error = (line_no, (f"{error}. Check the chat_template in the tokenizer's tokenizer_config.json "
                                              "(tokenizer.from_dir when it was adopted)."))
                    return False
                texts.append(full)
                spans.append(turn_spans)
            docs = self.encode_batch(texts, spans)
        tok_out.write(b"".join([ids for ids, _ in docs]))
        result.lengths.extend([len(ids) // self.dtype.itemsize for ids, _ in docs])
        masks = [mask for _, mask in docs if mask is not None]
        if masks:
            mask_out.write(b"".join(masks))
            result.n_masked += sum(mask.count(1) for mask in masks)
        return True


def range_size(size: int, workers: int) -> int:
    """Bytes per task: at least four tasks per worker (so a slow range does not leave cores idle), at most RANGE_BYTES."""
    return max(1 << 20, min(RANGE_BYTES, size // (4 * workers)))


def write_ranges(encoder: RangeEncoder, tmp: Path, tokenizer_dir: Path, workers: int, range_bytes: int | None,
                 progress: Progress | None) -> tuple[ReadStats, array, int]:
    """Tokenize the whole file into tmp/tokens.bin and tmp/mask.bin: (stats, document lengths, masked tokens).
    `range_bytes` per task (default: range_size). Raises the located DataError of the first bad line
    in file order."""
    path = encoder.data_path
    size = path.stat().st_size
    stats, lengths, n_masked, line_base = ReadStats(), array("q"), 0, 0
    # A write failing for want of space names the cache file (a failed write() on an open file names none).
    with writing(tmp / "tokens.bin"), open(tmp / "tokens.bin", "wb") as tok_out, open(tmp / "mask.bin", "wb") as mask_out:
        if workers <= 1:
            report = (lambda at: progress(at, size)) if progress else None
            results: Iterator[tuple[int, RangeResult, int]] = iter([(0, encoder.encode(0, size, tok_out, mask_out, report), size)])
        else:
            results = _parallel(encoder, tmp, tokenizer_dir, workers, line_ranges(path, range_bytes or range_size(size, workers)))
        try:
            for k, result, end in results:
                if result.error is not None:
                    line_no, text = result.error
                    raise DataError(f"{path}:{line_base + line_no}: {text}")
                if workers > 1:  # append the range's part files in file order, then drop them
                    for name, out in (("tokens", tok_out), ("mask", mask_out)):
                        part = tmp / f"part-{k:06d}.{name}"
                        with open(part, "rb") as src:
                            shutil.copyfileobj(src, out, 8 << 20)
                        part.unlink()
                _merge_stats(stats, result.stats, line_base)
                lengths.extend(result.lengths)
                n_masked += result.n_masked
                line_base += result.lines
                if progress:
                    progress(end, size)
        finally:
            # Stop the workers now, not when the traceback lets go of the generator: the caller deletes tmp next.
            getattr(results, "close", lambda: None)()
        for handle in (tok_out, mask_out):
            handle.flush()
            os.fsync(handle.fileno())
    return stats, lengths, n_masked


def _merge_stats(total: ReadStats, part: ReadStats, line_base: int) -> None:
    """Add a range's counts; its skipped examples renumbered, the first ten of the file kept."""
    total.lines += part.lines
    total.records += part.records
    for line_no, reason in part.skipped_examples:
        total.skip(line_base + line_no, reason)
    total.skipped += part.skipped - len(part.skipped_examples)  # the skips past a range's own ten examples


# --------------------------------------------------------------------------------------------
# Worker processes


_WORKER: dict[str, RangeEncoder] = {}


def _parallel(encoder: RangeEncoder, tmp: Path, tokenizer_dir: Path, workers: int,
              ranges: list[tuple[int, int]]) -> Iterator[tuple[int, RangeResult, int]]:
    """(range index, result, range end) in file order, at most two ranges per worker in flight."""
    # spawn, not fork: the parent may hold torch's and the tokenizer's thread pools, which do not survive fork.
    context = multiprocessing.get_context("spawn")
    settings = (str(tokenizer_dir), encoder.kind, encoder.on_bad_line, encoder.hint, encoder.dtype.str,
                encoder.batch_size, str(encoder.data_path))
    with context.Pool(workers, initializer=_init_worker, initargs=settings) as pool:
        todo = iter(enumerate(ranges))
        pending: deque[tuple[int, Any, int]] = deque()

        def submit() -> None:
            for k, (start, end) in todo:
                pending.append((k, pool.apply_async(_encode_part, (k, start, end, str(tmp))), end))
                return

        for _ in range(2 * workers):
            submit()
        while pending:
            k, job, end = pending.popleft()
            result = job.get()
            submit()
            yield k, result, end


def _init_worker(tokenizer_dir: str, kind: Kind, on_bad_line: Literal["error", "skip"], hint: str, dtype: str,
                 batch_size: int, data_path: str) -> None:
    # One core per worker: the tokenizer's own thread pool would put cores x workers threads on the machine.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # The parent decides when to stop. A Ctrl-C or a closed terminal reaching a worker would kill it mid-task,
    # and the pool would wait for that task's result forever.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    from engine.data.tokenizer import load_tokenizer

    _WORKER["encoder"] = RangeEncoder(load_tokenizer(tokenizer_dir), kind, on_bad_line, hint, np.dtype(dtype), batch_size,
                                      Path(data_path))


def _encode_part(k: int, start: int, end: int, tmp: str) -> RangeResult:
    tokens, mask = Path(tmp) / f"part-{k:06d}.tokens", Path(tmp) / f"part-{k:06d}.mask"
    with writing(tokens), open(tokens, "wb") as tok_out, open(mask, "wb") as mask_out:
        return _WORKER["encoder"].encode(start, end, tok_out, mask_out)
