"""Tiny presets that train in seconds on the CPU, and the one finished run the read-only tests share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.config import Preset, preset_from_dict


def preset_factory(corpus: tuple[Path, Path], root: Path) -> Callable[..., Preset]:
    """Builds tiny presets (hidden 32, 2 layers, vocab 320) on the test corpus, writing under root;
    keyword arguments update sections (dicts) or set top-level fields."""
    pretrain, sft = corpus

    def make(**sections: dict) -> Preset:
        data = {
            "name": "unit",
            "seed": 7,
            "out_dir": str(root / "runs"),
            "model": {"vocab_size": 320, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "rope_theta": 1e4},
            "runtime": {"device": "cpu", "dtype": "float32", "cache_dir": str(root / "cache")},
            "tokenizer": {"data_path": str(pretrain), "heldout_lines": 20},
            "pretrain": {"data_path": str(pretrain), "max_steps": 6, "batch_size": 4, "max_seq_len": 32,
                         "learning_rate": 3e-3, "log_interval": 1, "save_interval": 100, "eval_fraction": 0.05,
                         "eval_max_batches": 2},
            "sft": {"data_path": str(sft), "max_steps": 4, "batch_size": 4, "max_seq_len": 32,
                    "learning_rate": 1e-3, "log_interval": 1, "save_interval": 100, "eval_fraction": 0.05,
                    "eval_max_batches": 2},
        }
        for name, values in sections.items():
            if isinstance(values, dict):
                data.setdefault(name, {}).update(values)
            else:
                data[name] = values
        return preset_from_dict(data)

    return make


def train_run(corpus: tuple[Path, Path], root: Path) -> Path:
    """A finished tokenizer -> pretrain (30 steps) -> sft (20 steps) run of the tiny preset, alone in
    root/runs (so its parent is a runs folder the studio and the CLI can list)."""
    from engine.runs.pipeline import run_pipeline
    from engine.runs.run_dir import create_run

    run_dir = create_run(preset_factory(corpus, root)(pretrain={"max_steps": 30}, sft={"max_steps": 20}))
    run_pipeline(run_dir)
    return run_dir
