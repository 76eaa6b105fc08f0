"""Inspecting a jsonl file before training on it: what the studio's Data tab shows, computed by the engine.

Reading uses the engine's own line-numbered reader with on_bad_line="skip", so the bad lines listed are
exactly the ones a run would refuse. Token lengths use a run's tokenizer and the chat template the run
would use, and `trained_spans` says which characters of a record the SFT loss mask trains on, from the
same span finder training uses. No UI here: the studio styles the spans.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.jsonl import Kind, ReadStats, iter_jsonl
from engine.data.messages import parse_conversation
from engine.data.sft_mask import Render, Span, SpanFinder, template_render, tokenizer_render

BROWSE_RECORDS = 500  # records kept for browsing
TOKENIZE_RECORDS = 20_000  # records tokenized for the length statistics (a sample of huge files)


@dataclass
class DataReport:
    path: Path
    kind: Kind
    size_bytes: int
    lines: int
    records: int
    skipped: int
    bad_lines: list[tuple[int, str]]  # (line number, reason), the first few
    records_sample: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


@dataclass
class LengthStats:
    tokenizer_dir: Path
    max_seq_len: int
    lengths: list[int]
    truncated_to: int | None  # when only the first N records were tokenized

    @property
    def beyond(self) -> float:
        """Share of tokens past max_seq_len (what packing splits across blocks, or SFT truncates)."""
        total = sum(self.lengths)
        return sum(max(0, n - self.max_seq_len) for n in self.lengths) / total if total else 0.0


def detect_kind(path: Path) -> Kind:
    """SFT when the first parseable object has "conversations", else pretrain."""
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            return "sft" if isinstance(obj, dict) and "conversations" in obj else "pretrain"
    return "pretrain"


def scan_file(path: Path, kind: Kind | None = None, keep: int = BROWSE_RECORDS) -> DataReport:
    """Lines, records and bad lines of a jsonl file, and its first `keep` records for browsing."""
    path = Path(path)
    kind = kind or detect_kind(path)
    stats = ReadStats()
    sample: list[tuple[int, dict[str, Any]]] = []
    for line_no, record in iter_jsonl(path, kind, on_bad_line="skip", stats=stats):
        if len(sample) < keep:
            sample.append((line_no, record))
    return DataReport(path, kind, path.stat().st_size, stats.lines, stats.records, stats.skipped,
                      list(stats.skipped_examples), sample)


def default_render() -> Render:
    """The built-in chat template through jinja2 set up as transformers does (no transformers import to browse)."""
    from engine.data.tokenizer import BOS, CHAT_TEMPLATE, EOS

    return template_render(CHAT_TEMPLATE, bos_token=BOS, eos_token=EOS)


def trained_spans(record: dict[str, Any], kind: Kind, tokenizer: Any = None) -> tuple[str, list[Span]]:
    """(the record as the model sees it, the character spans its loss trains on).

    With `tokenizer` (a run's, loaded by load_tokenizer) its own template and bos/eos are used, else the
    built-in template's. A pretrain document is trained on whole. ValueError (RecordProblem) for an SFT
    record the template cannot render."""
    if tokenizer is not None:
        render, bos, eos = tokenizer_render(tokenizer), tokenizer.bos_token or "", tokenizer.eos_token or ""
    else:
        render, bos, eos = default_render(), "<s>", "</s>"
    if kind == "pretrain":
        text = bos + record.get("text", "") + eos
        return text, [(0, len(text))]
    return SpanFinder(render)(parse_conversation(record))


def token_lengths(tokenizer: Any, records: list[dict[str, Any]], kind: Kind) -> list[int]:
    """Tokens of each record as training counts them (bos/eos around a document; SFT through the template)."""
    if kind == "pretrain":
        texts = [r.get("text", "") for r in records]
        extra = 2  # <s> ... </s> around each document
    else:
        render = tokenizer_render(tokenizer)
        texts = [render(conv.messages, conv.tools, False) for conv in map(parse_conversation, records)]
        extra = 0
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [len(ids) + extra for ids in encoded]


def length_stats(path: Path, kind: Kind, tokenizer: Any, tokenizer_dir: Path, max_seq_len: int,
                 limit: int = TOKENIZE_RECORDS) -> LengthStats:
    """Token lengths of the first `limit` records under `tokenizer` (loaded from tokenizer_dir)."""
    records = []
    for _, record in iter_jsonl(path, kind, on_bad_line="skip"):
        records.append(record)
        if len(records) >= limit:
            break
    truncated = limit if len(records) >= limit else None
    return LengthStats(Path(tokenizer_dir), max_seq_len, token_lengths(tokenizer, records, kind), truncated)
