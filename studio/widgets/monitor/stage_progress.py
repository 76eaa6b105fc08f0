"""One progress line per stage of the run: bar, step/total, ETA or final state."""

from __future__ import annotations

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from engine.api import RunState
from engine.events import CacheProgressEvent
from studio.display import state_colour, state_style
from studio.run_watch import RunSnapshot


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"ETA {hours}h{rest // 60:02d}m" if hours else f"ETA {rest // 60}m{rest % 60:02d}s"


def cache_row(name: str, cache: CacheProgressEvent, bold: bool) -> tuple:
    """A stage whose data file is being tokenized into the cache: a bar in MB, the rate and its ETA."""
    done, total = cache.bytes_done / 1e6, max(1e-6, cache.bytes_total / 1e6)
    return (
        Text(name, style="bold" if bold else ""),
        ProgressBar(total=total, completed=done, complete_style="cyan"),
        f"{done:,.0f}/{total:,.0f} MB",
        Text(eta_text(cache.eta_s).replace("ETA", "data") or "data", style="cyan"),  # "data 0m30s": tokenizing
    )


def stages_table(snapshot: RunSnapshot | None) -> Table | str:
    """One row per stage of the snapshot ('' before any stage is known)."""
    if snapshot is None or not snapshot.stages:
        return ""
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(width=9, no_wrap=True)
    table.add_column(ratio=1)
    table.add_column(width=13, no_wrap=True, justify="right")
    table.add_column(width=12, no_wrap=True)
    died = snapshot.state in (RunState.CRASHED, RunState.FAILED)  # the stage it died in takes the run's state
    for stage in snapshot.stages:
        crashed = died and stage.name == snapshot.stage and stage.state == RunState.RUNNING
        state = snapshot.state if crashed else stage.state
        tail = eta_text(stage.eta_s) if state == RunState.RUNNING else str(state)
        if stage.cache is not None and state == RunState.PENDING:
            table.add_row(*cache_row(stage.name, stage.cache, bold=stage.name == snapshot.stage))
            continue
        table.add_row(
            Text(stage.name, style="bold" if stage.name == snapshot.stage else ""),
            ProgressBar(total=max(1, stage.total_steps), completed=stage.step if stage.total_steps else 0,
                        complete_style=state_colour(state), finished_style="green"),
            f"{stage.step}/{stage.total_steps}",
            Text(tail, style=state_style(state)),
        )
    return table


class StageProgress(Static):
    def show(self, snapshot: RunSnapshot | None) -> None:
        self.update(stages_table(snapshot))
