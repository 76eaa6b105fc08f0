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

    def __call__(self, event: dict[str, Any]) -> None:
        kind, stage = event["kind"], event.get("stage", "")
        if kind == "stage_start":
            if stage != "tokenizer":
                self.console.print(
                    f"[bold]{stage}[/]: {event.get('n_docs', '?')} records, {event.get('n_tokens', 0):,} tokens -> "
                    f"{event.get('blocks', '?')} sequences; {event.get('params', 0) / 1e6:.2f}M params on "
                    f"{event.get('device')} ({event.get('dtype')}: {event.get('dtype_reason')})"
                )
            self.tasks[stage] = self.progress.add_task(
                stage, total=event["total_steps"], completed=event.get("start_step", 0), metrics=""
            )
        elif kind == "step" and stage in self.tasks:
            metrics = (
                f"loss {num(event.get('loss'), '.4f')}  lr {num(event.get('lr'), '.2e')}  "
                f"{num(event.get('tokens_per_s'), ',.0f')} tok/s"
            )
            self.progress.update(self.tasks[stage], completed=event["step"], metrics=metrics)
        elif kind == "eval" and event.get("heldout_total"):
            self.console.print(f"  {stage} step {event['step']}: held-out exact match {event['heldout_accuracy']:.1%} "
                               f"({event['heldout_correct']}/{event['heldout_total']})")
        elif kind == "eval":
            self.console.print(f"  {stage} step {event['step']}: eval loss {num(event.get('eval_loss'), '.4f')}")
        elif kind == "stage_end" and stage in self.tasks:
            self.progress.update(self.tasks[stage], completed=event["step"])
            if stage == "tokenizer":
                self.console.print(
                    f"tokenizer: vocab {event.get('vocab_size')}, {num(event.get('chars_per_token'), '.2f')} chars/token "
                    f"on held-out text, {num(event.get('train_seconds'), '.1f')} s"
                )
        elif kind == "cache_progress":
            # Tokenizing a big file into the cache takes minutes before the first step: its own bar, in MB.
            key = f"{stage} data"
            if key not in self.tasks:
                self.tasks[key] = self.progress.add_task(key, total=max(1, round(event["bytes_total"] / 1e6)),
                                                         metrics="")
            self.progress.update(self.tasks[key], completed=event["bytes_done"] / 1e6,
                                 metrics=f"tokenizing {event['mb_per_s']:.1f} MB/s (MB)")
        elif kind == "warning":
            self.console.print(f"[yellow]warning:[/] {event.get('message')}")
        elif kind == "note":
            self.console.print(f"  {stage}: {event.get('message')}")


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
