"""Memory of the run's device from its newest step event: a gauge against the GPU's total, else RSS."""

from __future__ import annotations

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from engine.events import StepEvent
from studio.display import MISSING


def mib(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def memory_renderable(step: StepEvent | None) -> Table | Text:
    if step is None:
        return Text("memory: no step events yet", style="dim")
    total = step.mem_total_mb
    if total:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=8)
        table.add_column(ratio=1)
        table.add_column(no_wrap=True, justify="right")
        for label, reading in (("alloc", step.mem_alloc_mb), ("peak", step.mem_peak_mb), ("reserved", step.mem_reserved_mb)):
            used = reading or 0.0
            style = "red" if used > 0.9 * total else "yellow" if used > 0.75 * total else "green"
            table.add_row(label, ProgressBar(total=total, completed=used, complete_style=style), f"{mib(used)}/{mib(total)}")
        if step.gpu_util_pct is not None:
            table.add_row("gpu util", ProgressBar(total=100, completed=step.gpu_util_pct), f"{step.gpu_util_pct:.0f}%")
        return table
    if step.rss_mb is not None:
        return Text(f"process RSS {mib(step.rss_mb)} (CPU run)")
    return Text("memory: no step events yet", style="dim")


class MemoryPanel(Static):
    def show(self, step: StepEvent | None) -> None:
        self.update(memory_renderable(step))
