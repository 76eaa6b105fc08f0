"""What the Data tab shows about a jsonl file (no UI here; everything runs in worker threads).

Reading uses the engine's own line-numbered reader with on_bad_line="skip", so the bad lines listed
are exactly the ones a run would refuse. Token statistics use a run's tokenizer and the chat template
the run would use, and the record browser highlights the characters the SFT loss mask trains on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

if TYPE_CHECKING:
    from engine.data.jsonl import Kind

BROWSE_RECORDS = 500  # records kept for the browser
TOKENIZE_RECORDS = 20_000  # records tokenized for the histogram (a sample of huge files)
MASK_STYLE = "bold black on green"


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
    from engine.data.jsonl import ReadStats, iter_jsonl

    path = Path(path)
    kind = kind or detect_kind(path)
    stats = ReadStats()
    sample: list[tuple[int, dict[str, Any]]] = []
    for line_no, record in iter_jsonl(path, kind, on_bad_line="skip", stats=stats):
        if len(sample) < keep:
            sample.append((line_no, record))
    return DataReport(path, kind, path.stat().st_size, stats.lines, stats.records, stats.skipped,
                      list(stats.skipped_examples), sample)


def default_render() -> Callable[[list[dict[str, Any]], list[dict[str, Any]] | None, bool], str]:
    """The built-in chat template through jinja2 set up as transformers does (no transformers import to browse)."""
    from engine.data.sft_mask import template_render
    from engine.data.tokenizer import BOS, CHAT_TEMPLATE, EOS

    return template_render(CHAT_TEMPLATE, bos_token=BOS, eos_token=EOS)


def render_record(record: dict[str, Any], kind: Kind, render: Callable | None = None, bos: str = "<s>", eos: str = "</s>") -> Text:
    """The record as the model sees it, with the trained characters highlighted.

    `render(messages, tools, add_generation_prompt)` is the run's template (default: the built-in one).
    """
    from engine.data.messages import parse_conversation
    from engine.data.sft_mask import SpanFinder

    if kind == "pretrain":
        text = Text(bos + record.get("text", "") + eos)
        text.stylize(MASK_STYLE)
        return text
    full, spans = SpanFinder(render or default_render())(parse_conversation(record))
    text = Text(full)
    for start, end in spans:
        text.stylize(MASK_STYLE, start, end)
    return text


def token_lengths(tokenizer: Any, records: list[dict[str, Any]], kind: Kind) -> list[int]:
    from engine.data.messages import parse_conversation
    from engine.data.sft_mask import tokenizer_render

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
    from engine.data.jsonl import iter_jsonl

    records = []
    for _, record in iter_jsonl(path, kind, on_bad_line="skip"):
        records.append(record)
        if len(records) >= limit:
            break
    truncated = limit if len(records) >= limit else None
    return LengthStats(Path(tokenizer_dir), max_seq_len, token_lengths(tokenizer, records, kind), truncated)


def histogram(values: list[int], bins: int = 20) -> tuple[list[float], list[int]]:
    """(bin centres, counts) over equal-width bins from 0 to the maximum."""
    if not values:
        return [], []
    top = max(values) + 1
    width = max(1, -(-top // bins))
    counts = [0] * (-(-top // width))
    for v in values:
        counts[v // width] += 1
    return [width * (i + 0.5) for i in range(len(counts))], counts


def run_tokenizers(runs_dir: Path) -> list[tuple[str, Path, dict[str, int]]]:
    """(run id, tokenizer dir, {"pretrain": max_seq_len, "sft": max_seq_len}) of runs that have a tokenizer."""
    from engine.config import load_preset
    from engine.errors import PresetError
    from engine.runs.run_dir import list_runs

    found = []
    for run_dir in reversed(list_runs(runs_dir)):
        if not (run_dir / "tokenizer" / "tokenizer.json").is_file():
            continue
        try:
            preset = load_preset(run_dir / "preset.toml")
            seq = {"pretrain": preset.pretrain.max_seq_len, "sft": preset.sft.max_seq_len}
        except PresetError:
            seq = {"pretrain": 512, "sft": 512}
        found.append((run_dir.name, run_dir / "tokenizer", seq))
    return found


def dataset_files(extra: list[Path] | None = None) -> list[Path]:
    """jsonl files in the project's dataset/ and in ./dataset (when it is another folder)."""
    from engine.config import PROJECT_ROOT

    seen: set[Path] = set()
    files = []
    for folder in [PROJECT_ROOT / "dataset", Path.cwd() / "dataset", *(extra or [])]:
        if folder.is_dir() and folder.resolve() not in seen:
            seen.add(folder.resolve())
            files += sorted(folder.glob("*.jsonl"))
    return files
