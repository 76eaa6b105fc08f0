"""GGUF export: a checkpoint as one file that llama.cpp, Ollama and LM Studio load, architecture "llama".

Written with the `gguf` package (llama.cpp's own Python writer), beside an Ollama Modelfile. The
tokenizer half lives in engine/checkpoints/gguf_vocab.py; this module holds the model half:
- metadata: the llama.* shape keys and general.* (name, file type, sampling defaults);
- tensors under llama.cpp's names (the gguf package maps Hugging Face Llama names, which ours are);
- Q and K rows reordered from Hugging Face's rotary layout to llama.cpp's (`permute_rotary`);
- storage per tensor by one rule (`storage_type`): 1-D tensors F32, matrices in the chosen dtype, and
  for q8_0 a matrix whose rows are not a multiple of 32 long falls back to F16.
A tied lm_head is not written: llama.cpp uses token_embd as the output projection when `output` is absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

from engine.atomic import fsync_dir, write_text_atomic
from engine.checkpoints.checkpoint import Checkpoint
from engine.checkpoints.formats import GGUF_DTYPES as GGUF_DTYPES  # re-exported: tests and bench read it here
from engine.checkpoints.formats import check_dtype
from engine.checkpoints.gguf_vocab import GgufVocab, add_vocab, modelfile, read_vocab
from engine.checkpoints.hf_export import generation_config, refuse_moe
from engine.config import ModelConfig
from engine.errors import ExportError

Q8_0 = gguf.GGMLQuantizationType.Q8_0
GGUF_FILE = "model.gguf"
# Both maps are keyed by engine.checkpoints.formats.GGUF_DTYPES (the torch-free list the CLI and the studio offer).
_MATRIX_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                 "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": Q8_0}
_FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
Q8_BLOCK = gguf.GGML_QUANT_SIZES[Q8_0][0]  # 32 values share one scale


def storage_type(shape: tuple[int, ...], dtype: str) -> gguf.GGMLQuantizationType:
    """How one tensor of this (numpy, row-major) shape is stored when exporting in `dtype`.

    Norm weights stay F32: they are tiny, and llama.cpp's kernels expect F32 there. q8_0 quantizes each
    row in blocks of 32, so a row length that is not a multiple of 32 cannot be; those matrices take F16.
    """
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    kind = _MATRIX_TYPES[dtype]
    if kind == Q8_0 and shape[-1] % Q8_BLOCK:
        return gguf.GGMLQuantizationType.F16
    return kind


def permute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Q or K projection rows (n_heads * head_dim, in) reordered for llama.cpp's rotary.

    Hugging Face rotates dimension i of a head together with i + head_dim/2; llama.cpp's "normal" rope
    (the llama architecture's) rotates 2i with 2i+1, at the same frequency index i. Sending each head's
    first-half row i to 2i and second-half row i to 2i+1 makes both rotate the same pairs by the same
    angles; K uses the number of KV heads.
    """
    rows, cols = weight.shape
    half = rows // n_heads // 2
    # (h, 2, half, in) -> (h, half, 2, in): the two halves of each head interleaved row by row
    return weight.reshape(n_heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_tensors(
    tensors: dict[str, torch.Tensor], config: ModelConfig, dtype: str, permute_qk: bool = True
) -> Iterator[tuple[str, np.ndarray, gguf.GGMLQuantizationType]]:
    """(llama.cpp name, encoded data, storage type) for each Hugging Face Llama tensor."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for hf_name, tensor in tensors.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # some Llama exports keep the tied copy; llama.cpp falls back to token_embd
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # older Llama dumps save it; llama.cpp derives it from rope.freq_base
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"tensor {hf_name!r} has no llama.cpp counterpart; this is not a dense Llama checkpoint")
        array = tensor.to(torch.float32).numpy()  # bf16/f16 HF exports widen exactly
        projection = hf_name.split(".")[-2]
        if permute_qk and projection in heads:
            array = permute_rotary(array, heads[projection])
        kind = storage_type(array.shape, dtype)
        yield name, gguf.quants.quantize(np.ascontiguousarray(array), kind), kind


def _model_name(ckpt: Checkpoint) -> str:
    preset = ckpt.state.get("preset") or {}
    return f"{preset.get('name') or ckpt.path.name}-{ckpt.stage}"


def sampling_defaults(ckpt: Checkpoint) -> dict[str, Any]:
    """An HF directory's own generation_config.json (its owner may have tuned it), else what an HF export writes."""
    path = ckpt.path / "generation_config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return generation_config({})


def add_model_metadata(writer: gguf.GGUFWriter, config: ModelConfig, dtype: str, name: str,
                       sampling: dict[str, Any]) -> None:
    """general.* and llama.* keys."""
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if sampling.get("temperature") is not None:
        writer.add_sampling_temp(float(sampling["temperature"]))
    if sampling.get("top_p") is not None:
        writer.add_sampling_top_p(float(sampling["top_p"]))
    if sampling.get("top_k"):
        writer.add_sampling_top_k(int(sampling["top_k"]))
    # context_length: the positions the rotary is prepared for, as config.json's max_position_embeddings.
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.ffn_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _write_atomic(writer: gguf.GGUFWriter, path: Path) -> None:
    """Header, keys and tensors into a hidden sibling, flushed to disk, then renamed over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.flush()
        for handle in writer.fout or []:
            os.fsync(handle.fileno())
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def export_gguf(ckpt: Checkpoint, out_dir: Path, dtype: str = "f16", *, _permute_qk: bool = True) -> Path:
    """Write out_dir/model.gguf and out_dir/Modelfile; returns the .gguf path.

    `_permute_qk=False` exists only so a test can prove that the forward-pass check catches a file
    written without the rotary reordering; such a file is wrong for llama.cpp.
    """
    check_dtype("gguf", dtype)
    refuse_moe(ckpt)
    config = ckpt.model_config
    vocab: GgufVocab = read_vocab(ckpt.tokenizer_dir, config.vocab_size)  # refuses before any heavy work
    sampling = sampling_defaults(ckpt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    add_model_metadata(writer, config, dtype, _model_name(ckpt), sampling)
    add_vocab(writer, vocab)
    weights = load_file(str(ckpt.path / "model.safetensors"))
    for name, data, kind in gguf_tensors(weights, config, dtype, permute_qk=_permute_qk):
        writer.add_tensor(name, data, raw_dtype=kind)
    path = out_dir / GGUF_FILE
    _write_atomic(writer, path)
    write_text_atomic(out_dir / "Modelfile", modelfile(path.name, vocab, sampling))
    return path
