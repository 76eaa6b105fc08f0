"""Data tools, for `minimind-studio data sample` and the studio's Data tab: inspect a jsonl file, measure
its token lengths under a run's tokenizer, see what SFT trains on, and down-sample it.

Every function imports its engine module when called (numpy, tokenizers; transformers for a tokenizer), so
importing this module stays cheap; the report types are looked up the same way (PEP 562 `__getattr__`).
The studio calls these in thread workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api.lazy import lazy_names

if TYPE_CHECKING:
    from engine.data.jsonl import Kind
    from engine.data.sample import SampleReport
    from engine.data.scan import DataReport, LengthStats

__all__ = ["DataReport", "Kind", "LengthStats", "SampleReport", "length_stats", "load_tokenizer", "run_tokenizers",
           "sample_jsonl", "scan_file", "trained_spans"]

_LAZY = {"DataReport": "engine.data.scan", "Kind": "engine.data.jsonl", "LengthStats": "engine.data.scan",
         "SampleReport": "engine.data.sample"}


def scan_file(path: Path, kind: Kind | None = None) -> DataReport:
    """Lines, records and bad lines (as a run would refuse them) of a jsonl file, and its first records.
    `kind` None: SFT when the first object has "conversations", else pretrain."""
    from engine.data.scan import scan_file as scan

    return scan(path, kind)


def load_tokenizer(directory: str | Path) -> Any:
    """A run's tokenizer (a Hugging Face tokenizer directory). Imports transformers."""
    from engine.data.tokenizer import load_tokenizer as load

    return load(directory)


def length_stats(path: Path, kind: Kind, tokenizer: Any, tokenizer_dir: Path, max_seq_len: int) -> LengthStats:
    """Token lengths of the file's first records under `tokenizer` (loaded from tokenizer_dir), against max_seq_len."""
    from engine.data.scan import length_stats as measure

    return measure(path, kind, tokenizer, tokenizer_dir, max_seq_len)


def trained_spans(record: dict[str, Any], kind: Kind, tokenizer: Any = None) -> tuple[str, list[tuple[int, int]]]:
    """(the record as the model sees it, the character spans the loss trains on), through `tokenizer`'s
    template or, without one, the built-in template. ValueError for a record the template cannot render."""
    from engine.data.scan import trained_spans as spans

    return spans(record, kind, tokenizer)


def sample_jsonl(src: Path, dst: Path, target_mb: float, seed: int = 42) -> SampleReport:
    """Random lines of src up to target_mb MiB into dst, chosen reproducibly by seed (streamed: any file size)."""
    from engine.data.sample import sample_jsonl as sample

    return sample(src, dst, target_mb, seed)


def run_tokenizers(runs_dir: Path) -> list[tuple[str, Path, dict[str, int]]]:
    """(run id, tokenizer dir, {"pretrain": max_seq_len, "sft": max_seq_len}) of the runs that have a tokenizer,
    newest first; a run whose frozen preset no longer reads counts with 512."""
    from engine.api.runs import list_runs
    from engine.config import load_preset
    from engine.errors import PresetError

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


__getattr__ = lazy_names(globals(), _LAZY)
