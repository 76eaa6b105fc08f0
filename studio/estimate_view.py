"""Rich rendering of a pre-flight estimate, shared by `minimind-studio estimate` and the studio's launch
preview. Pure formatting: the numbers come from engine.api.estimate."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from engine.api.estimate import StageEstimate, Target, device_peak


def human_bytes(count: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if count >= size:
            return f"{count / size:,.2f} {unit}" if unit == "GiB" else f"{count / size:,.0f} {unit}"
    return f"{count / 1024:,.0f} KiB"


def human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def target_line(target: Target) -> str:
    memory = human_bytes(target.memory_bytes) if target.memory_bytes else "unknown memory"
    what = "available RAM" if target.device == "cpu" else "GPU memory"
    return f"{target.name or target.device}, {target.dtype}, {memory} {what}"


def verdict(stage: StageEstimate, target: Target) -> Text:
    needed = human_bytes(device_peak(stage.memory, target))
    if stage.fits is None:
        return Text(f"needs about {needed}; device memory unknown", style="yellow")
    if stage.fits:
        return Text(f"fits: needs about {needed} (largest micro-batch that fits: {stage.largest_batch})", style="green")
    if stage.largest_batch:
        return Text(f"does not fit: needs about {needed}; batch {stage.largest_batch} would", style="bold red")
    return Text(f"does not fit: needs about {needed}, even one sequence is too much", style="bold red")


def stage_table(stage: StageEstimate, target: Target, measured_peak: int | None = None) -> Table:
    table = Table(title=f"{stage.stage}: micro-batch {stage.batch_size} x {stage.seq_len} tokens"
                        f"{f' x {stage.accumulation_steps} accumulated' if stage.accumulation_steps > 1 else ''}",
                  title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column(justify="right")
    for label, count in stage.memory.rows():
        if count:
            table.add_row(label, human_bytes(count))
    table.add_row(Text("peak (estimated)", style="bold"), Text(human_bytes(stage.memory.peak), style="bold"))
    if target.device == "cuda":
        table.add_row("with the allocator's reserve", human_bytes(device_peak(stage.memory, target)))
    if measured_peak:
        table.add_row("peak (measured, --calibrate)", f"{human_bytes(measured_peak)} "
                      f"({measured_peak / stage.memory.peak - 1:+.0%})")
    if stage.total_steps:
        table.add_row("optimizer steps", f"{stage.total_steps:,}")
    if stage.tokens:
        table.add_row("tokens", f"{stage.tokens:,}")
    if stage.tokens_per_s:
        table.add_row("throughput", f"{stage.tokens_per_s:,.0f} tokens/s ({stage.throughput_source})")
    table.add_row("time", human_seconds(stage.seconds) if stage.seconds else stage.throughput_source)
    return table


def estimate_renderable(title: str, target: Target, stages: list[StageEstimate],
                        measured: dict[str, int] | None = None) -> RenderableType:
    parts: list[RenderableType] = [Text(title, style="bold"), Text(target_line(target), style="dim"), Text("")]
    for stage in stages:
        if stage.world_size > 1:
            parts.append(Text(f"{stage.stage}: {stage.world_size} processes ({stage.strategy}); memory is per process, "
                              f"global batch {stage.global_batch} sequences per step", style="dim"))
        parts.append(stage_table(stage, target, (measured or {}).get(stage.stage)))
        parts.append(verdict(stage, target))
        parts.extend(Text(f"  - {note}", style="yellow") for note in stage.advice)
        parts.append(Text(""))
    return Group(*parts)
