"""A rich progress display for a foreground run, fed by the run's events (no Textual, no torch)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
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

    def summary(self, run_id: str, state: str, reason: str | None = None) -> Table:
        """The table printed when a foreground run ends: each stage that ended in this session."""
        table = Table(title=f"run {run_id}: {state}" + (f" ({reason})" if reason and state != "finished" else ""))
        for column in ("stage", "steps", "time", "final loss", "eval loss"):
            table.add_column(column, no_wrap=True)
        table.add_column("output", overflow="fold")
        for name, end in self.ended.items():
            if end.vocab_size is not None:  # the tokenizer's report
                table.add_row(name, MISSING, f"{num(end.train_seconds, '.1f')}s", MISSING, MISSING,
                              f"vocab {end.vocab_size}, {num(end.chars_per_token, '.2f')} chars/token")
                continue
            output = self.checkpoints.get(name, MISSING)
            heldout = self.heldout.get(name)
            if heldout:
                output += (f"\nheld-out exact match {num(heldout.heldout_accuracy, '.1%')} "
                           f"({heldout.heldout_correct}/{heldout.heldout_total})")
            table.add_row(name, f"{end.step}/{end.total_steps}", f"{num(end.seconds, '.1f')}s", num(end.loss, ".4f"),
                          num(end.eval_loss, ".4f"), output)
        return table
