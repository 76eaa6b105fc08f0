"""A rich progress display for a foreground run, fed by the run's events (no Textual, no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from engine.events import (
    CacheProgressEvent,
    CheckpointEvent,
    EvalEvent,
    Event,
    NoteEvent,
    StageEndEvent,
    StageStartEvent,
    StepEvent,
    WarningEvent,
)
from studio.display import MISSING, num


class RunProgress:
    """Listener for EventLog: one progress bar per stage with loss, lr, tokens/s and ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        # What the summary table shows, gathered from the same events (one process or a torchrun job alike).
        self.ended: dict[str, StageEndEvent] = {}
        self.checkpoints: dict[str, str] = {}
        self.heldout: dict[str, EvalEvent] = {}

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        stage = event.stage or ""
        self._remember(event)
        if isinstance(event, StageStartEvent):
            data_bar = self.tasks.pop(f"{stage} data", None)
            if data_bar is not None:  # the token cache is built: its bar goes (a log would print it stale at the end)
                self.progress.remove_task(data_bar)
            if stage != "tokenizer":
                self.console.print(
                    f"[bold]{stage}[/]: {num(event.n_docs, ',')} records, {num(event.n_tokens, ',')} tokens -> "
                    f"{num(event.blocks, ',')} sequences; {num((event.params or 0) / 1e6, '.2f')}M params on "
                    f"{event.device} ({event.dtype}: {event.dtype_reason})"
                )
            self.tasks[stage] = self.progress.add_task(stage, total=event.total_steps, completed=event.start_step,
                                                       metrics="")
        elif isinstance(event, StepEvent) and stage in self.tasks:
            metrics = f"loss {num(event.loss, '.4f')}  lr {num(event.lr, '.2e')}  {num(event.tokens_per_s, ',.0f')} tok/s"
            self.progress.update(self.tasks[stage], completed=event.step, metrics=metrics)
        elif isinstance(event, EvalEvent) and event.heldout_total:
            self.console.print(f"  {stage} step {event.step}: held-out exact match {num(event.heldout_accuracy, '.1%')} "
                               f"({event.heldout_correct}/{event.heldout_total})")
        elif isinstance(event, EvalEvent):
            self.console.print(f"  {stage} step {event.step}: eval loss {num(event.eval_loss, '.4f')}")
        elif isinstance(event, StageEndEvent) and stage in self.tasks:
            self.progress.update(self.tasks[stage], completed=event.step)
            if stage == "tokenizer":
                self.console.print(
                    f"tokenizer: vocab {event.vocab_size}, {num(event.chars_per_token, '.2f')} chars/token "
                    f"on held-out text, {num(event.train_seconds, '.1f')} s"
                )
        elif isinstance(event, CacheProgressEvent):
            # Tokenizing a big file into the cache takes minutes before the first step: its own bar, in MB.
            key = f"{stage} data"
            if key not in self.tasks:
                self.tasks[key] = self.progress.add_task(key, total=max(1, round(event.bytes_total / 1e6)), metrics="")
            self.progress.update(self.tasks[key], completed=event.bytes_done / 1e6,
                                 metrics=f"tokenizing {event.mb_per_s:.1f} MB/s (MB)")
        elif isinstance(event, WarningEvent):
            self.console.print(f"[yellow]warning:[/] {event.message}")
        elif isinstance(event, NoteEvent):
            self.console.print(f"  {stage}: {event.message}")


    def _remember(self, event: Event) -> None:
        if isinstance(event, StageEndEvent):
            self.ended[event.stage] = event
        elif isinstance(event, CheckpointEvent):
            self.checkpoints[event.stage] = event.path
        elif isinstance(event, EvalEvent) and event.heldout_total:
            self.heldout[event.stage] = event

    def summary(self, run_id: str, state: str, reason: str | None = None, run_dir: Path | None = None) -> Group:
        """What is printed when a foreground run ends: a table of each stage that ended in this session, then each
        stage's checkpoint relative to `run_dir`, one per line (inside the table, a path wraps into several lines
        at 80 columns)."""
        table = Table(title=f"run {run_id}: {state}" + (f" ({reason})" if reason and state != "finished" else ""))
        for column in ("stage", "steps", "time", "loss", "eval loss"):
            table.add_column(column, no_wrap=True)
        table.add_column("result")
        saved: list[str] = []
        for name, end in self.ended.items():
            if end.vocab_size is not None:  # the tokenizer's report
                table.add_row(name, MISSING, f"{num(end.train_seconds, '.1f')}s", MISSING, MISSING,
                              f"vocab {end.vocab_size}, {num(end.chars_per_token, '.2f')} char/tok")
                continue
            heldout = self.heldout.get(name)  # short: the column has about 25 characters at 80 columns
            result = (f"held-out {num(heldout.heldout_accuracy, '.1%')} "
                      f"({heldout.heldout_correct}/{heldout.heldout_total})") if heldout else MISSING
            table.add_row(name, f"{end.step}/{end.total_steps}", f"{num(end.seconds, '.1f')}s", num(end.loss, ".4f"),
                          num(end.eval_loss, ".4f"), result)
            if name in self.checkpoints:
                saved.append(f"{name}: {relative_to(self.checkpoints[name], run_dir)}")
        lines = [Text(f"checkpoints in {run_dir}:" if run_dir else "checkpoints:")] + [Text(f"  {line}") for line in saved]
        return Group(table, *lines) if saved else Group(table)


def relative_to(path: str, run_dir: Path | None) -> str:
    """`path` inside `run_dir` as a relative path, else as it is."""
    if run_dir is None or path == MISSING:
        return path
    try:
        return str(Path(path).relative_to(run_dir))
    except ValueError:
        return path
