"""The export dialog's request and its worker's result; the export itself is engine.api.export's.

`run` imports the engine's writers (torch) and so must only ever run inside a thread worker; tests
monkeypatch it. The format names, `how_to_use` and `ollama_name` are re-exported for the Runs pane.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.api import export as api
from engine.api.export import FORMATS, default_out_dir, how_to_use, ollama_name

__all__ = ["FORMATS", "ExportRequest", "ExportResult", "default_out_dir", "how_to_use", "ollama_name", "run"]


@dataclass(frozen=True)
class ExportRequest:
    """What the export dialog asks for: one checkpoint, one format and dtype, one output directory."""

    checkpoint: Path  # a checkpoint directory (runs/<id>/checkpoints/<stage>/latest or step_*)
    label: str  # how the dialog named it, for the notification: "<run id> · sft · latest (step_000004)"
    fmt: str
    dtype: str
    out_dir: Path


@dataclass(frozen=True)
class ExportResult:
    request: ExportRequest
    written: Path  # the .gguf file, or the Hugging Face directory
    size: str  # "12.3 MiB"


def run(request: ExportRequest) -> ExportResult:
    """The studio's export (thread worker only); the engine's refusals (MoE, tokenizer) raise ExportError."""
    done = api.export(request.checkpoint, request.fmt, request.dtype, request.out_dir)
    return ExportResult(request, done.written, done.size)
