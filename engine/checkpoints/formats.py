"""Which export formats exist and which dtypes each takes: the one list, torch-free.

The export writers (engine/checkpoints/hf_export.py, gguf_export.py) import torch, gguf and safetensors at
import time; the CLI's flags and the studio's export dialog need the names without paying for them, so the
names live here and the writers key their torch / GGUF type maps by them (tests/engine/test_export.py
holds the maps' keys equal to these tuples).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import ExportError


@dataclass(frozen=True)
class ExportFormat:
    key: str  # the CLI's --format value
    label: str
    dtypes: tuple[str, ...]  # named as the format's own tools name them (torch's names, llama.cpp's names)
    default_dtype: str
    writes: str  # what lands in the output directory, for the dialog


FORMATS: dict[str, ExportFormat] = {
    # float32 by default: the checkpoint's own precision, so nothing is lost unless asked for.
    "hf": ExportFormat("hf", "Hugging Face (safetensors)", ("float32", "bfloat16", "float16"), "float32",
                       "model.safetensors, config.json and the tokenizer"),
    # f16 by default, as llama.cpp's converter does: half the size of f32 at no loss that matters here.
    "gguf": ExportFormat("gguf", "GGUF (llama.cpp, Ollama)", ("f32", "f16", "bf16", "q8_0"), "f16",
                         "model.gguf and an Ollama Modelfile"),
}
HF_DTYPES = FORMATS["hf"].dtypes
GGUF_DTYPES = FORMATS["gguf"].dtypes


def check_dtype(fmt: str, dtype: str | None) -> str:
    """The dtype to use (the format's default for None); ExportError for a format or dtype that does not exist.
    The words are the CLI's flags: the dialog only offers valid pairs, so only a typed command gets here wrong."""
    choice = FORMATS.get(fmt)
    if choice is None:
        raise ExportError(f"--format {fmt} is not an export format; choose one of {', '.join(FORMATS)}")
    dtype = dtype or choice.default_dtype
    if dtype not in choice.dtypes:
        raise ExportError(f"--dtype {dtype} does not fit --format {fmt}; choose one of {', '.join(choice.dtypes)}")
    return dtype


def dtype_help() -> str:
    """'hf: float32 (default), bfloat16, float16; gguf: ...' for the CLI's --dtype help."""
    def names(choice: ExportFormat) -> str:
        return ", ".join(f"{d} (default)" if d == choice.default_dtype else d for d in choice.dtypes)

    return "; ".join(f"{choice.key}: {names(choice)}" for choice in FORMATS.values())
