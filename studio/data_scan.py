"""What the Data tab draws from the engine's inspection of a jsonl file (engine.api.data): the record with its
trained characters styled, the length histogram's bins and the files to offer. No UI widgets here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from engine.api.data import trained_spans

if TYPE_CHECKING:
    from engine.api.data import Kind

MASK_STYLE = "bold black on green"


def render_record(record: dict[str, Any], kind: Kind, tokenizer: Any = None) -> Text:
    """The record as the model sees it, with the trained characters highlighted; through `tokenizer`'s chat
    template when given (a run's), else the built-in one. ValueError for a record the template cannot render."""
    full, spans = trained_spans(record, kind, tokenizer)
    text = Text(full)
    for start, end in spans:
        text.stylize(MASK_STYLE, start, end)
    return text


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
