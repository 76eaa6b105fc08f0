"""`minimind-studio logs [-f] RUN`: a plain-terminal view of a run, rebuilt from its directory.

It follows events.jsonl from a byte offset (never re-reading the file), so it works the same for a
run started a week ago in another SSH session.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from engine.api.runs import effective_state, read_status
from engine.events import EvalEvent, StepEvent, format_event, mfu_text, read_events
from studio.display import num, state_style, state_text, text_or_missing

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """Loss history in one line of block characters (the last `width` points, bucketed)."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width)]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1)))] for v in values)


def tail_lines(path: Path, n: int) -> list[str]:
    """The last n lines of a file, reading only its end."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            return handle.read().decode("utf-8", errors="replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


class RunFollower:
    """Incremental state of one run: the newest step event, a bounded loss history, recent event lines."""

    def __init__(self, run_dir: Path, history: int = 2000) -> None:
        self.run_dir = run_dir
        self.offset = 0
        self.last_step: StepEvent | None = None
        self.losses: deque[float] = deque(maxlen=history)
        self.lines: deque[str] = deque(maxlen=8)
        self.eval: EvalEvent | None = None

    def poll(self) -> None:
        events, self.offset = read_events(self.run_dir / "events.jsonl", self.offset)
        for event in events:
            if isinstance(event, StepEvent):
                if self.last_step is None or event.stage != self.last_step.stage:
                    self.losses.clear()
                self.last_step = event
                if event.loss is not None:
                    self.losses.append(event.loss)
            elif isinstance(event, EvalEvent):
                self.eval = event
            if not isinstance(event, StepEvent):
                line = format_event(event)
                if line:
                    self.lines.append(line)

    def render(self, log_lines: int = 6) -> Group:
        status = read_status(self.run_dir)
        state = effective_state(status)
        step, total = status.get("step", 0), status.get("total_steps", 0) or 1
        s = self.last_step
        head = Table.grid(padding=(0, 2))
        head.add_row(Text(self.run_dir.name, style="bold"), state_text(state),
                     f"stage {text_or_missing(status.get('stage'))}", f"step {step}/{status.get('total_steps', 0)}")

        memory = f"rss {num(s and s.rss_mb, ',.0f')} MiB" if s is None or s.rss_mb is not None else (
            f"alloc {num(s.mem_alloc_mb, ',.0f')} / peak {num(s.mem_peak_mb, ',.0f')} / "
            f"reserved {num(s.mem_reserved_mb, ',.0f')} MiB")
        metrics = Text("   ".join([
            f"loss {num(s and s.loss, '.4f')}", f"eval {num(self.eval and self.eval.eval_loss, '.4f')}",
            f"lr {num(s and s.lr, '.2e')}", f"grad {num(s and s.grad_norm, '.3f')}",
            f"{num(s and s.tokens_per_s, ',.0f')} tok/s", f"mfu {mfu_text(s)}", memory,
            f"eta {num(s and s.eta_s, ',.0f')}s"]))
        bar = Table.grid(expand=True)
        bar.add_row(ProgressBar(total=total, completed=min(step, total)))
        parts: list[Any] = [head, bar, metrics,
                            Text(sparkline(list(self.losses)), style="cyan")]
        if status.get("exit_reason") and not state.live:
            parts.append(Text(f"exit: {status['exit_reason']}", style=state_style(state)))
        parts.append(Panel("\n".join(self.lines) or "(no events yet)", title="events", title_align="left"))
        parts.append(Panel("\n".join(tail_lines(self.run_dir / "train.log", log_lines)) or "(empty)",
                           title="train.log", title_align="left"))
        return Group(*parts)


def show_logs(run_dir: Path, follow: bool, console: Console, interval: float = 1.0) -> None:
    follower = RunFollower(run_dir)
    follower.poll()
    if not follow:
        console.print(follower.render())
        return
    with Live(follower.render(), console=console, refresh_per_second=4, transient=False) as live:
        while True:
            time.sleep(interval)
            follower.poll()
            live.update(follower.render())
            if not effective_state(read_status(run_dir)).live:
                follower.poll()
                live.update(follower.render())
                return
