"""Exporting a checkpoint, shared by `minimind-studio export` and the studio's export dialog.

The formats and their dtypes are named here rather than read from engine.checkpoints.hf_export.EXPORT_DTYPES and
engine.checkpoints.gguf_export.GGUF_DTYPES because both engine modules import torch, and the studio must start
without it (tests/studio/test_export_modal.py holds the two lists equal). `write` and `run` import
the engine and so must only ever run inside a thread worker or the CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.checkpoints.checkpoint import Checkpoint


@dataclass(frozen=True)
class ExportFormat:
    key: str  # the CLI's --format value
    label: str
    dtypes: tuple[str, ...]  # named as the format's own tools name them
    default_dtype: str
    writes: str  # what lands in the output directory, for the dialog


FORMATS = {
    # float32 by default: the checkpoint's own precision, so nothing is lost unless asked for.
    "hf": ExportFormat("hf", "Hugging Face (safetensors)", ("float32", "bfloat16", "float16"), "float32",
                       "model.safetensors, config.json and the tokenizer"),
    # f16 by default, as llama.cpp's converter does: half the size of f32 at no loss that matters here.
    "gguf": ExportFormat("gguf", "GGUF (llama.cpp, Ollama)", ("f32", "f16", "bf16", "q8_0"), "f16",
                         "model.gguf and an Ollama Modelfile"),
}


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


def check_dtype(fmt: str, dtype: str | None) -> str:
    """The dtype to use (the format's default for None); EngineError for one the format does not have."""
    choice = FORMATS[fmt]
    dtype = dtype or choice.default_dtype
    if dtype not in choice.dtypes:
        raise EngineError(f"--dtype {dtype} does not fit --format {fmt}; choose one of {', '.join(choice.dtypes)}")
    return dtype


def write(ckpt: Checkpoint, fmt: str, dtype: str, out_dir: Path) -> Path:
    """Write ckpt in `fmt`; returns the .gguf file or the Hugging Face directory. Imports torch."""
    if fmt == "gguf":
        from engine.checkpoints.gguf_export import export_gguf

        return export_gguf(ckpt, out_dir, dtype=dtype)
    from engine.checkpoints.hf_export import export_hf

    return export_hf(ckpt, out_dir, dtype=dtype)


def mib(path: Path) -> str:
    """The size of a file, or of everything in a directory, as "12.3 MiB"."""
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{size / 2**20:.1f} MiB"


def run(request: ExportRequest) -> ExportResult:
    """The studio's export (thread worker only); the engine's refusals (MoE, tokenizer) raise ExportError."""
    from engine.checkpoints.checkpoint import read_checkpoint

    ckpt = read_checkpoint(request.checkpoint)
    written = write(ckpt, request.fmt, check_dtype(request.fmt, request.dtype), request.out_dir)
    return ExportResult(request, written, mib(written))
