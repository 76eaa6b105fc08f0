"""The runs table shared by `minimind-studio runs` (rich) — one row per run directory."""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text

from engine.api import RunSummary
from studio.display import MISSING, num, state_text, text_or_missing

COLUMNS = ("id", "preset", "stage", "step", "loss", "tok/s", "state", "age")


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def row_cells(s: RunSummary, now: float) -> tuple[str, ...]:
    """The text of one row, in COLUMNS order (shared by the CLI table and the studio's DataTable)."""
    return (
        s.run_id, s.preset, text_or_missing(s.stage), f"{s.step}/{s.total_steps}",
        num(s.loss, ".4f"), num(s.tokens_per_s, ",.0f"), str(s.state), human_age(now - s.started_at if s.started_at else None),
    )


def runs_table(summaries: list[RunSummary], now: float | None = None) -> Table:
    now = now or time.time()
    table = Table(title="runs", box=None, padding=(0, 1), header_style="bold underline")
    for column in COLUMNS:
        table.add_column(column, no_wrap=True)
    for s in summaries:
        cells: list[str | Text] = list(row_cells(s, now))
        cells[6] = state_text(s.state)
        table.add_row(*cells)
    return table
