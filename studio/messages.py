"""Messages posted by the studio's workers and panes (toolong's habit: plain dataclasses).

Thread workers never touch widgets: they post one of these, and the pane's handler updates the UI on
the event loop. `RunUpdated` carries a whole snapshot, so a burst of them can be merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.message import Message

from engine.runs import RunSummary
from studio.run_watch import RunSnapshot

if TYPE_CHECKING:
    from studio.exporter import ExportRequest, ExportResult
    from studio.launcher import LaunchEstimate


@dataclass
class RunUpdated(Message):
    """A followed run changed (new events, a new state, new log lines)."""

    snapshot: RunSnapshot

    def can_replace(self, message: Message) -> bool:
        # An older snapshot of the same run still waiting in the queue is superseded by a newer one.
        return isinstance(message, RunUpdated) and message.snapshot.run_dir == self.snapshot.run_dir


@dataclass
class RunsScanned(Message):
    """A fresh listing of the runs directory (or why it could not be read)."""

    rows: list[RunSummary]
    error: str | None = None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsScanned)


@dataclass
class OpenRuns(Message):
    """Show these runs in the monitor (the first one in full, the others overlaid on its loss curve)."""

    run_dirs: list[Path]


@dataclass
class LaunchFailed(Message):
    """Preflight or launch refused; `message` is the paragraph the CLI would print."""

    message: str


@dataclass
class EstimateReady(Message):
    """The pre-flight estimate of the preset the launch dialog is asking about."""

    estimate: LaunchEstimate


@dataclass
class EstimateFailed(Message):
    """The estimate could not be made (unknown device, a dtype the machine lacks...): one paragraph."""

    message: str


@dataclass
class LaunchDone(Message):
    """The launcher returned the new run's directory."""

    run_dir: Path


@dataclass
class ExportDone(Message):
    """A checkpoint was written in the format the export dialog asked for."""

    result: ExportResult


@dataclass
class ExportFailed(Message):
    """The export was refused or failed (an MoE checkpoint, a tokenizer GGUF cannot hold...): one paragraph."""

    request: ExportRequest
    message: str


@dataclass
class ChatPiece(Message):
    """A piece of streamed reply text for chat column `column`."""

    column: int
    text: str


@dataclass
class ChatDone(Message):
    """A reply finished (or was stopped); the elapsed time and the number of pieces for the status line."""

    column: int
    stopped: bool
    pieces: int
    seconds: float


@dataclass
class ChatReady(Message):
    """A checkpoint loaded for chat column `column`."""

    column: int
    info: dict[str, Any]


@dataclass
class DataScanned(Message):
    """A jsonl file was read: counts, bad lines and the first records for the browser."""

    report: Any  # studio.data_scan.DataReport


@dataclass
class TokenStats(Message):
    """Token lengths of a data file under a run's tokenizer."""

    stats: Any  # studio.data_scan.LengthStats
    tokenizer: Any  # the loaded tokenizer, reused by the record browser


@dataclass
class SampleWritten(Message):
    """The down-sampler finished."""

    report: Any  # engine.sample.SampleReport
