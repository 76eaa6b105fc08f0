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

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        stage = event.stage or ""
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


def summary_table(result: Any) -> Table:
    table = Table(title=f"run {result.run_dir.name}: {result.state}")
    for column in ("stage", "steps", "time", "final loss", "eval loss"):
        table.add_column(column, no_wrap=True)
    table.add_column("output", overflow="fold")
    for name, outcome in result.stages.items():
        if outcome is None:
            continue
        if name == "tokenizer":
            table.add_row(name, MISSING, f"{outcome['train_seconds']:.1f}s", MISSING, MISSING,
                          f"vocab {outcome['vocab_size']}, {outcome['chars_per_token']:.2f} chars/token")
            continue
        output = str(outcome.checkpoint or MISSING)
        heldout = outcome.extra.get("heldout")
        if heldout:
            output += f"\nheld-out exact match {heldout['accuracy']:.1%} ({heldout['correct']}/{heldout['total']})"
        table.add_row(
            name, f"{outcome.step}/{outcome.total_steps}", f"{outcome.seconds:.1f}s", num(outcome.final_loss, ".4f"),
            num(outcome.eval_loss, ".4f"), output,
        )
    return table
