"""Fixtures for engine tests: a small corpus and a tiny preset that trains in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import pytest

from engine.config import Preset, preset_from_dict

WORDS = "the cat dog sat on a mat red blue green big small runs jumps fast slow 猫 狗 红色 蓝色 大 小 跑".split()


def write_corpus(folder: Path, n_docs: int = 300, n_dialogues: int = 120, seed: int = 0) -> tuple[Path, Path]:
    """A pretrain file of random sentences and an SFT file of short dialogues (deterministic)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pretrain, sft = folder / "pretrain.jsonl", folder / "sft.jsonl"
    with open(pretrain, "w", encoding="utf-8") as handle:
        for _ in range(n_docs):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    with open(sft, "w", encoding="utf-8") as handle:
        for _ in range(n_dialogues):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            turns = [{"role": "user", "content": f"{a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]
            if rng.random() < 0.3:
                turns.insert(0, {"role": "system", "content": "be brief"})
            handle.write(json.dumps({"conversations": turns}, ensure_ascii=False) + "\n")
    return pretrain, sft


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def preset_factory(corpus: tuple[Path, Path], root: Path) -> Callable[..., Preset]:
    """Builds tiny presets (hidden 32, 2 layers, vocab 320) on the test corpus, writing under root;
    keyword arguments update sections (dicts) or set top-level fields."""
    pretrain, sft = corpus
    tmp_path = root

    def make(**sections: dict) -> Preset:
        data = {
            "name": "unit",
            "seed": 7,
            "out_dir": str(tmp_path / "runs"),
            "model": {"vocab_size": 320, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "rope_theta": 1e4},
            "runtime": {"device": "cpu", "dtype": "float32", "cache_dir": str(tmp_path / "cache")},
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


@pytest.fixture
def make_preset(corpus: tuple[Path, Path], tmp_path: Path) -> Callable[..., Preset]:
    return preset_factory(corpus, tmp_path)


@pytest.fixture(scope="session")
def trained_run(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tokenizer -> pretrain -> sft run, shared by the read-only tests (chat, export)."""
    from engine.pipeline import run_pipeline
    from engine.runs import create_run

    make = preset_factory(corpus, tmp_path_factory.mktemp("trained"))
    run_dir = create_run(make(pretrain={"max_steps": 30}, sft={"max_steps": 20}))
    run_pipeline(run_dir)
    return run_dir
