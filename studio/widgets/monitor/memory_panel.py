"""Memory of the run's device from its newest step event: a gauge against the GPU's total, else RSS; a run of
several processes (torchrun) gets one gauge per GPU (or one RSS line per process)."""

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


def gauge(used: float, total: float) -> ProgressBar:
    style = "red" if used > 0.9 * total else "yellow" if used > 0.75 * total else "green"
    return ProgressBar(total=total, completed=used, complete_style=style)


def ranks_renderable(step: StepEvent) -> Table:
    """One row per process: its peak allocation against its GPU's memory, or its RSS on a CPU."""
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(width=8)
    table.add_column(ratio=1)
    table.add_column(no_wrap=True, justify="right")
    for rank in step.ranks or []:
        if rank.mem_total_mb:
            used = rank.mem_peak_mb or rank.mem_alloc_mb or 0.0
            util = f" {rank.gpu_util_pct:.0f}%" if rank.gpu_util_pct is not None else ""
            table.add_row(f"gpu {rank.rank}", gauge(used, rank.mem_total_mb), f"{mib(used)}/{mib(rank.mem_total_mb)}{util}")
        else:
            table.add_row(f"rank {rank.rank}", Text("process RSS (CPU)", style="dim"), mib(rank.rss_mb))
    return table


def memory_renderable(step: StepEvent | None) -> Table | Text:
    if step is None:
        return Text("memory: no step events yet", style="dim")
    if step.ranks and len(step.ranks) > 1:
        return ranks_renderable(step)
    total = step.mem_total_mb
    if total:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=8)
        table.add_column(ratio=1)
        table.add_column(no_wrap=True, justify="right")
        for label, reading in (("alloc", step.mem_alloc_mb), ("peak", step.mem_peak_mb), ("reserved", step.mem_reserved_mb)):
            used = reading or 0.0
            table.add_row(label, gauge(used, total), f"{mib(used)}/{mib(total)}")
        if step.gpu_util_pct is not None:
            table.add_row("gpu util", ProgressBar(total=100, completed=step.gpu_util_pct), f"{step.gpu_util_pct:.0f}%")
        return table
    if step.rss_mb is not None:
        return Text(f"process RSS {mib(step.rss_mb)} (CPU run)")
    return Text("memory: no step events yet", style="dim")


class MemoryPanel(Static):
    def show(self, step: StepEvent | None) -> None:
        self.update(memory_renderable(step))
