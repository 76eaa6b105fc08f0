"""Messages posted by the studio's workers and panes (toolong's habit: plain dataclasses).

Thread workers never touch widgets: they post one of these, and the pane's handler updates the UI on
the event loop. `RunUpdated` carries a whole snapshot, so a burst of them can be merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from textual.message import Message

from engine.api import RunSummary
from studio.run_watch import RunSnapshot

if TYPE_CHECKING:  # payload types only: these modules (or what they import) are not needed to post a message
    from transformers import PreTrainedTokenizerBase

    from engine.api.data import DataReport, LengthStats, SampleReport
    from engine.api.estimate import Estimate
    from studio.errors import ShownError
    from studio.exporter import ExportRequest, ExportResult


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
    """Preflight refused the preset (an EngineError); `message` is the paragraph the CLI would print."""

    message: str


@dataclass
class EstimateReady(Message):
    """The pre-flight estimate of the preset the launch dialog is asking about."""

    estimate: Estimate


@dataclass
class EstimateFailed(Message):
    """The estimate could not be made: the engine's paragraph (unknown device, a dtype the machine lacks...)
    or a bug with its traceback."""

    error: ShownError


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
    """The export was refused (an MoE checkpoint, a tokenizer GGUF cannot hold...: the engine's paragraph)
    or failed (a bug, with its traceback)."""

    request: ExportRequest
    error: ShownError


@dataclass
class ChatPiece(Message):
    """A piece of streamed reply text for chat column `column`, in conversation `epoch` (see ChatPane.epoch)."""

    column: int
    text: str
    epoch: int = 0


@dataclass
class ChatStart(Message):
    """A reply begins streaming in column `column`: `start` is where (engine.chat.reply.reply_start; "reasoning"
    when the template's generation prompt opened `<think>`), so the log reads its first pieces as thinking."""

    column: int
    start: Literal["reasoning", "answer"]
    epoch: int = 0


@dataclass
class ChatDone(Message):
    """A reply finished (or was stopped); the elapsed time and the number of pieces for the status line, and
    the tokens of its think block for the folded reasoning's title."""

    column: int
    stopped: bool
    pieces: int
    seconds: float
    epoch: int = 0
    reasoning_tokens: int = 0


@dataclass
class ChatReady(Message):
    """A checkpoint loaded for chat column `column`: where, which step, and how it is talked to."""

    column: int
    path: Path
    step: int
    mode: Literal["chat", "continue"]  # engine.chat.session.ChatSession.mode: "continue" for a pretrain checkpoint
    epoch: int = 0
    thinking_switch: bool = False  # its chat template takes enable_thinking (the tab's thinking switch applies)


@dataclass
class DataScanned(Message):
    """A jsonl file was read: counts, bad lines and the first records for the browser."""

    report: DataReport


@dataclass
class TokenStats(Message):
    """Token lengths of a data file under a run's tokenizer."""

    stats: LengthStats
    tokenizer: PreTrainedTokenizerBase  # the loaded tokenizer, reused by the record browser


@dataclass
class SampleWritten(Message):
    """The down-sampler finished."""

    report: SampleReport
