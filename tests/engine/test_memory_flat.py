"""Memory stays flat over a long run of the real training loop (evals, samples and checkpoints included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STEPS = 400
RUNNER = Path(__file__).with_name("flat_run.py")
ROOT = Path(__file__).resolve().parents[2]


def rss_by_step(corpus, work: Path, leak: bool = False) -> dict[int, float]:
    """RSS per logged step of a fresh process training the unit preset (see flat_run.py for why fresh)."""
    args = [sys.executable, str(RUNNER), str(corpus[0].parent), str(work), str(STEPS)] + (["--leak"] if leak else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's engine and tests.support, whatever is installed
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return {int(step): rss for step, rss in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def late_growth(rss: dict[int, float]) -> float:
    """Peak RSS over the last 100 steps relative to the peak over steps 50-150 (after warm-up, the first
    eval and the first checkpoint have allocated what they need)."""
    early = max(v for s, v in rss.items() if 50 <= s <= 150)
    late = max(v for s, v in rss.items() if s > max(rss) - 100)
    return late / early - 1


def test_rss_at_the_end_is_within_2_percent_of_step_50(corpus, tmp_path):
    """Guards against memory that grows with steps: tensors kept across steps (losses with their graph,
    eval outputs, event payloads), checkpoint buffers never freed, caches that only grow."""
    growth = late_growth(rss_by_step(corpus, tmp_path))
    assert growth <= 0.02, f"RSS grew {growth:+.1%} between steps 50-150 and the last 100 of {STEPS}"


def test_the_flatness_check_catches_a_leak(corpus, tmp_path):
    """Guards the guard: a forward that keeps every step's outputs and a copy of the weights alive must
    fail the same check."""
    growth = late_growth(rss_by_step(corpus, tmp_path, leak=True))
    assert growth > 0.02, f"a leak of every step's outputs and weights went unnoticed ({growth:+.1%})"
