"""The runs table shared by `minimind-studio runs` (rich) — one row per run directory."""

from __future__ import annotations

import time

from rich.table import Table

from engine.runs import RunSummary

COLUMNS = ("id", "preset", "stage", "step", "loss", "tok/s", "state", "age")
STATE_STYLE = {"running": "green", "finished": "bold green", "stopped": "yellow", "stopping": "yellow",
               "failed": "red", "crashed": "bold red", "queued": "cyan", "broken": "red"}


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def row_cells(s: RunSummary, now: float) -> tuple[str, ...]:
    """The text of one row, in COLUMNS order (shared by the CLI table and the studio's DataTable)."""
    return (
        s.run_id, s.preset, s.stage or "-", f"{s.step}/{s.total_steps}",
        "-" if s.loss is None else f"{s.loss:.4f}", "-" if s.tokens_per_s is None else f"{s.tokens_per_s:,.0f}",
        s.state, human_age(now - s.started_at if s.started_at else None),
    )


def runs_table(summaries: list[RunSummary], now: float | None = None) -> Table:
    now = now or time.time()
    table = Table(title="runs", box=None, padding=(0, 1), header_style="bold underline")
    for column in COLUMNS:
        table.add_column(column, no_wrap=True)
    for s in summaries:
        cells = list(row_cells(s, now))
        cells[6] = f"[{STATE_STYLE.get(s.state, '')}]{s.state}[/]"
        table.add_row(*cells)
    return table
