"""A small deterministic corpus: random sentences for pretraining, short sums as SFT dialogues."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
