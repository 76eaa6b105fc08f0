"""The SFT down-sampler: a byte budget, reproducible, a subset in the original order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.data.sample import sample_jsonl


def make_file(path: Path, n: int = 500) -> list[str]:
    lines = [json.dumps({"text": "x" * (i % 37 + 1), "i": i}) + "\n" for i in range(n)]
    path.write_text("".join(lines[:250]) + "\n" + "".join(lines[250:]))  # a blank line in the middle
    return lines


def test_budget_subset_order_and_seed(tmp_path: Path) -> None:
    """Guards against overshooting the budget, reordering/duplicating lines, or ignoring the seed."""
    lines = make_file(tmp_path / "in.jsonl")
    budget_mb = 10_000 / (1024 * 1024)
    report = sample_jsonl(tmp_path / "in.jsonl", tmp_path / "a.jsonl", budget_mb, seed=1)
    kept = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    assert report.kept_bytes <= 10_000 and report.kept_bytes > 9_000 and report.kept_lines == len(kept)
    positions = [lines.index(line) for line in kept]
    assert positions == sorted(set(positions))
    sample_jsonl(tmp_path / "in.jsonl", tmp_path / "b.jsonl", budget_mb, seed=1)
    sample_jsonl(tmp_path / "in.jsonl", tmp_path / "c.jsonl", budget_mb, seed=2)
    assert (tmp_path / "b.jsonl").read_text() == "".join(kept)
    assert (tmp_path / "c.jsonl").read_text() != "".join(kept)
    assert report.source_lines == 500


def test_cli_reports_counts(tmp_path: Path) -> None:
    """Guards against the CLI command not wiring --target-mb/--seed through."""
    make_file(tmp_path / "in.jsonl")
    done = subprocess.run([sys.executable, "-m", "studio.cli", "data", "sample", str(tmp_path / "in.jsonl"),
                           str(tmp_path / "out.jsonl"), "--target-mb", "1", "--seed", "3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kept 500 of 500 samples" in done.stdout
