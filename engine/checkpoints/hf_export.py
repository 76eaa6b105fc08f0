"""Hugging Face format, both ways.

Out: the dense model's parameter names already are `LlamaForCausalLM`'s, so export writes the same
safetensors (optionally cast), a Llama config.json, generation_config.json and the tokenizer files;
`AutoModelForCausalLM.from_pretrained(dir)` loads it without trust_remote_code.
In: a directory like that (ours, or any Llama-architecture model small enough to train here) can be
named as `from_weight`; it is read as a checkpoint at step 0.
GGUF for llama.cpp and Ollama is engine/checkpoints/gguf_export.py; the helpers both formats share live here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import torch
from safetensors.torch import load_file, save_file

from engine.atomic import write_json_atomic
from engine.checkpoints.checkpoint import Checkpoint
from engine.checkpoints.formats import check_dtype
from engine.config import ModelConfig
from engine.data.tokenizer_files import copy_tokenizer
from engine.errors import ExportError

# Keyed by engine.checkpoints.formats.HF_DTYPES (the torch-free list the CLI and the studio offer).
EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}



class SpecialTokenIds(TypedDict):
    """bos/eos/pad ids of a tokenizer under config.json's key names; None where it has none."""

    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None


def llama_config_dict(config: ModelConfig, special: SpecialTokenIds, dtype: str) -> dict[str, Any]:
    """config.json for LlamaForCausalLM, built by the installed transformers so its version's keys are right."""
    from transformers import LlamaConfig

    # rope_theta is the keyword transformers 4.x reads; 5.x still accepts it (and moves it into
    # rope_parameters) but its typed signature no longer lists it, hence passed through an untyped dict.
    legacy: dict[str, Any] = {"rope_theta": config.rope_theta}
    hf = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.ffn_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings, attention_bias=False,
        mlp_bias=False, attention_dropout=0.0, **special, **legacy,
    )
    data = hf.to_dict()
    data["architectures"] = ["LlamaForCausalLM"]
    data["torch_dtype" if "torch_dtype" in data else "dtype"] = dtype
    data.setdefault("rope_theta", config.rope_theta)  # older readers look for it at the top level
    return data


def special_token_ids(tokenizer: Any) -> SpecialTokenIds:
    """bos/eos/pad ids of a loaded tokenizer, under config.json's key names (None where it has none)."""
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _special_token_ids(tokenizer_dir: Path) -> SpecialTokenIds:
    from engine.data.tokenizer import load_tokenizer

    return special_token_ids(load_tokenizer(tokenizer_dir))


def generation_config(special: Mapping[str, object]) -> dict[str, Any]:
    """generation_config.json of an export: the sampling defaults GGUF also carries (general.sampling.*).
    special: the SpecialTokenIds of the export, or {} for the sampling defaults alone."""
    return {**special, "do_sample": True, "temperature": 0.8, "top_p": 0.9, "max_new_tokens": 256}


def refuse_moe(ckpt: Checkpoint) -> None:
    """Both export formats hold dense Llama weights only; an MoE checkpoint would silently lose its experts."""
    if ckpt.model_config.use_moe:
        raise ExportError(
            f"{ckpt.path} is a mixture-of-experts model; neither transformers' Llama nor llama.cpp's llama "
            "architecture holds minimind's shared + routed experts (without trust_remote_code), so export refuses "
            "rather than lose weights. Chat with it in the studio, or train a dense preset for export."
        )


def export_hf(ckpt: Checkpoint, out_dir: Path, dtype: str = "float32") -> Path:
    """Write ckpt as a Hugging Face model directory; returns it."""
    check_dtype("hf", dtype)  # an ExportError naming the choices, not a KeyError half-way through
    refuse_moe(ckpt)
    config = ckpt.model_config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(ckpt.path / "model.safetensors"))
    tensors = {name: t.to(EXPORT_DTYPES[dtype]).contiguous() for name, t in tensors.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    special = _special_token_ids(ckpt.tokenizer_dir)
    write_json_atomic(out_dir / "config.json", llama_config_dict(config, special, dtype))
    write_json_atomic(out_dir / "generation_config.json", generation_config(special))
    copy_tokenizer(ckpt.tokenizer_dir, out_dir)
    write_json_atomic(out_dir / "minimind_studio.json", {"stage": ckpt.stage, "step": ckpt.step, "source": str(ckpt.path)})
    return out_dir


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file() and not (path / "state.json").exists()


def read_hf_checkpoint(path: Path) -> Checkpoint:
    """An HF Llama directory as a starting checkpoint (the weights load by name, no conversion)."""
    data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if data.get("auto_map") or data.get("trust_remote_code"):
        raise ExportError(f"{path}: config.json asks for the model's own code (auto_map); minimind-studio never runs "
                          "code shipped with a model. Only plain Llama-architecture folders load (model_type llama, "
                          "no auto_map)")
    if data.get("model_type") != "llama":
        raise ExportError(f"{path}: model_type {data.get('model_type')!r} is not supported; only Llama-architecture models import")
    rope = data.get("rope_parameters") or {}
    model = ModelConfig(
        vocab_size=data["vocab_size"], hidden_size=data["hidden_size"], num_hidden_layers=data["num_hidden_layers"],
        num_attention_heads=data["num_attention_heads"],
        num_key_value_heads=data.get("num_key_value_heads") or data["num_attention_heads"],
        intermediate_size=data["intermediate_size"], max_position_embeddings=data.get("max_position_embeddings", 32768),
        rope_theta=rope.get("rope_theta", data.get("rope_theta", 10000.0)), rms_norm_eps=data.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=data.get("tie_word_embeddings", False),
    )
    if data.get("head_dim") not in (None, model.head_dim) or data.get("attention_bias") or data.get("mlp_bias"):
        raise ExportError(f"{path}: head_dim / biases differ from this engine's Llama layout; it cannot be imported")
    meta = {}
    if (path / "minimind_studio.json").is_file():
        meta = json.loads((path / "minimind_studio.json").read_text(encoding="utf-8"))
    state = {"stage": meta.get("stage", "hf"), "step": 0, "model": model.model_dump(mode="json"), "source": "huggingface"}
    return Checkpoint(path=path.resolve(), state=state)
