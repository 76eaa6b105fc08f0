"""Memory stays flat over a long run of the real training loop (evals, samples and checkpoints included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.model import CausalLM
from engine.pipeline import run_pipeline
from engine.runs import create_run

STEPS = 400


def rss_by_step(run_dir: Path) -> dict[int, float]:
    steps = {}
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "step" and event["stage"] == "pretrain":
            steps[event["step"]] = event["rss_mb"]
    return steps


def late_growth(rss: dict[int, float]) -> float:
    """Peak RSS over the last 100 steps relative to the peak over steps 50-150 (after warm-up, the first
    eval and the first checkpoint have allocated what they need)."""
    early = max(v for s, v in rss.items() if 50 <= s <= 150)
    late = max(v for s, v in rss.items() if s > max(rss) - 100)
    return late / early - 1


def long_run(make_preset) -> Path:
    preset = make_preset(stages=["tokenizer", "pretrain"], pretrain={
        "max_steps": STEPS, "log_interval": 10, "eval_interval": 50, "save_interval": 100, "keep_checkpoints": 2,
        "batch_size": 8, "max_seq_len": 64})
    run_dir = create_run(preset)
    run_pipeline(run_dir)
    return run_dir


def test_rss_at_the_end_is_within_2_percent_of_step_50(make_preset):
    """Guards against memory that grows with steps: tensors kept across steps (losses with their graph,
    eval outputs, event payloads), checkpoint buffers never freed, caches that only grow."""
    growth = late_growth(rss_by_step(long_run(make_preset)))
    assert growth <= 0.02, f"RSS grew {growth:+.1%} between steps 50-150 and the last 100 of {STEPS}"


def test_the_flatness_check_catches_a_leak(make_preset, monkeypatch):
    """Guards the guard: a forward that keeps every step's outputs (and so their autograd graphs) alive
    must fail the same check."""
    kept = []
    original = CausalLM.forward

    def leaky_forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        kept.append((out, [p.detach().clone() for p in self.parameters()]))
        return out

    monkeypatch.setattr(CausalLM, "forward", leaky_forward)
    growth = late_growth(rss_by_step(long_run(make_preset)))
    assert growth > 0.02, f"a leak of every step's outputs and weights went unnoticed ({growth:+.1%})"
    assert len(kept) >= STEPS
