"""Rows of the studio's runs table, read from run directories (no UI here, cheap enough for 1 Hz)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.runs import LIVE_STATES, RunSummary, list_runs, summarize
from studio.runs_table import human_age

COLUMNS = ("id", "preset", "stage", "step", "loss", "tok/s", "state", "age")
STATE_STYLE = {"running": "green", "finished": "bold green", "stopped": "yellow", "stopping": "yellow",
               "failed": "red", "crashed": "bold red", "queued": "cyan", "broken": "red"}


@dataclass(frozen=True)
class RunRow:
    run_dir: Path
    preset: str
    state: str
    stage: str | None
    step: int
    total_steps: int
    loss: float | None
    tokens_per_s: float | None
    started_at: float | None

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def live(self) -> bool:
        """A process may still be writing this run (a crashed one is not live)."""
        return self.state in LIVE_STATES

    @classmethod
    def from_summary(cls, s: RunSummary) -> RunRow:
        return cls(s.run_dir, s.preset, s.state, s.stage, s.step, s.total_steps, s.loss, s.tokens_per_s, s.started_at)

    def cells(self, now: float) -> tuple[str, ...]:
        return (
            self.run_id, self.preset, self.stage or "-", f"{self.step}/{self.total_steps}",
            "-" if self.loss is None else f"{self.loss:.4f}",
            "-" if self.tokens_per_s is None else f"{self.tokens_per_s:,.0f}",
            self.state, human_age(now - self.started_at if self.started_at else None),
        )


def scan_runs(runs_dir: Path) -> list[RunRow]:
    """One row per run directory, oldest first; a run whose files cannot be read shows as 'broken'."""
    rows = []
    for run_dir in list_runs(runs_dir):
        try:
            rows.append(RunRow.from_summary(summarize(run_dir)))
        except (OSError, ValueError):  # a hand-edited preset.toml (PresetError is a ValueError)
            rows.append(RunRow(run_dir, "?", "broken", None, 0, 0, None, None, None))
    return rows
