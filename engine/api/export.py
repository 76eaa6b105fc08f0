"""Exporting a checkpoint, for `minimind-studio export` and the studio's export dialog.

The formats and their dtypes are engine/checkpoints/formats.py's (torch-free, re-exported here); `export`
imports the writers, which import torch, so the studio calls it in a thread worker only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.checkpoints.formats import FORMATS, ExportFormat, check_dtype, dtype_help

if TYPE_CHECKING:
    from engine.checkpoints.checkpoint import Checkpoint

__all__ = ["FORMATS", "ExportFormat", "ExportResult", "check_dtype", "default_out_dir", "dtype_help", "export",
           "how_to_use", "ollama_name", "size_text"]


@dataclass(frozen=True)
class ExportResult:
    source: Path  # the checkpoint directory exported
    step: int
    fmt: str
    dtype: str
    written: Path  # the .gguf file, or the Hugging Face directory
    size_bytes: int

    @property
    def size(self) -> str:
        return size_text(self.size_bytes)

    @property
    def how_to_use(self) -> str:
        """The commands that load what was written, with the path as written (see `how_to_use` for another)."""
        return how_to_use(self.fmt, self.written, ollama_name(self.written.parent if self.fmt == "gguf" else self.written))


def export(checkpoint: str | Path | Checkpoint, fmt: str, dtype: str | None, out_dir: str | Path,
           runs_dir: str | Path = "runs") -> ExportResult:
    """Write `checkpoint` in `fmt` ("hf" or "gguf") and `dtype` (None: the format's default) into out_dir.

    `checkpoint` is what a user names (a checkpoint, stage or run directory, a run id under runs_dir, an
    exported Hugging Face folder), checked against the hashes recorded at save time, or a Checkpoint
    already read. A bad format or dtype is refused before anything is read; the engine's refusals (an MoE
    model, a tokenizer GGUF cannot hold) raise ExportError. Imports torch."""
    dtype = check_dtype(fmt, dtype)
    from engine.checkpoints.checkpoint import Checkpoint
    from engine.checkpoints.lookup import resolve_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else resolve_checkpoint(str(checkpoint), runs_dir)
    if fmt == "gguf":
        from engine.checkpoints.gguf_export import export_gguf

        written = export_gguf(ckpt, Path(out_dir), dtype=dtype)
    else:
        from engine.checkpoints.hf_export import export_hf

        written = export_hf(ckpt, Path(out_dir), dtype=dtype)
    return ExportResult(ckpt.path, ckpt.step, fmt, dtype, written, _size(written))


def default_out_dir(run_id: str, stage: str, fmt: str) -> str:
    """Where an export goes unless the user says otherwise, relative to the working directory."""
    return f"exports/{run_id}-{stage}-{fmt}"


def ollama_name(folder: Path) -> str:
    """A model name `ollama create` accepts (lowercase letters, digits, '-', '_', '.'), from the folder."""
    return re.sub(r"[^a-z0-9._-]+", "-", folder.resolve().name.lower()).strip("-.") or "minimind"


def how_to_use(fmt: str, written: Path | str, name: str) -> str:
    """The commands that load what was written (`written` as it should appear in them)."""
    written = Path(written)
    if fmt == "gguf":
        return (f"llama.cpp: llama-cli -m {written}   Ollama: cd {written.parent} && "
                f"ollama create {name} -f Modelfile && ollama run {name}")
    return f"load it with transformers.AutoModelForCausalLM.from_pretrained({str(written)!r})"


def size_text(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:.1f} MiB"


def _size(path: Path) -> int:
    """Bytes of a file, or of everything in a directory."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
