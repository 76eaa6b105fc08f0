"""Run by test_memory_flat.py in a fresh interpreter: trains the unit preset for N steps and prints the
RSS of each logged step as JSON. A fresh process matters: inside pytest's long-lived process the heap
left by earlier tests would absorb (and hide) growth. `--leak` keeps every step's outputs and a copy of
the weights, to prove the check catches growth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.model.transformer import CausalLM
from engine.runs.pipeline import run_pipeline
from engine.runs.run_dir import create_run


def main(corpus_dir: str, work_dir: str, steps: int, leak: bool) -> None:
    from tests.support.presets import preset_factory  # the repository root is on PYTHONPATH

    if leak:
        kept = []
        original = CausalLM.forward

        def leaky_forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            kept.append((out, [p.detach().clone() for p in self.parameters()]))
            return out

        CausalLM.forward = leaky_forward
    corpus = (Path(corpus_dir) / "pretrain.jsonl", Path(corpus_dir) / "sft.jsonl")
    make = preset_factory(corpus, Path(work_dir))
    preset = make(stages=["tokenizer", "pretrain"], pretrain={
        "max_steps": steps, "log_interval": 10, "eval_interval": 50, "save_interval": 100, "keep_checkpoints": 2,
        "batch_size": 8, "max_seq_len": 64})
    run_dir = create_run(preset)
    run_pipeline(run_dir)
    rss = {}
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "step" and event["stage"] == "pretrain":
            rss[event["step"]] = event["rss_mb"]
    print(json.dumps(rss))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--leak" in sys.argv)
