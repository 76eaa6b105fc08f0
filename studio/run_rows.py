"""Rows of the studio's runs table, read from run directories (no UI here, cheap enough for 1 Hz)."""

from __future__ import annotations

from pathlib import Path

from engine.api import RunState
from engine.api.runs import RunSummary, list_runs, summarize


def scan_runs(runs_dir: Path) -> list[RunSummary]:
    """One row per run directory, oldest first; a run whose files cannot be read shows as 'broken'."""
    rows = []
    for run_dir in list_runs(runs_dir):
        try:
            rows.append(summarize(run_dir))
        except (OSError, ValueError):  # a hand-edited preset.toml (PresetError is a ValueError)
            rows.append(RunSummary(run_dir, "?", RunState.BROKEN, None, 0, 0, None, None, None, None, None))
    return rows
