"""The README's first command, for real: the tiny preset runs all three stages and learns the corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.events import iter_events

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_preset_trains_all_stages_and_answers_heldout_questions(tmp_path: Path) -> None:
    """Guards against the built-in default regressing: a pipeline that runs but does not learn (held-out
    exact match < 80%, SFT loss not falling), or that ends without telling the user how to chat."""
    env = {**os.environ, "COLUMNS": "120", "PYTHONPATH": str(ROOT)}  # this checkout, whatever is installed
    done = subprocess.run(
        [sys.executable, "-m", "studio.cli", "run", "tiny", "--set", f"out_dir={tmp_path / 'runs'}",
         "--set", f"runtime.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"minimind-studio chat {run_dir}" in done.stdout.replace("\n", "")

    report = json.loads((run_dir / "heldout_sft.json").read_text())
    wrong = [r for r in report["results"] if not r["ok"]][:10]
    assert report["total"] >= 100 and report["accuracy"] >= 0.8, wrong

    sft_losses = [e.loss for e in iter_events(run_dir / "events.jsonl") if e.kind == "step" and e.stage == "sft"]
    assert sft_losses[-1] < 0.25 * sft_losses[0], sft_losses
