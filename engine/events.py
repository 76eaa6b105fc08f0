"""The run's append-only event stream (events.jsonl) and its fan-out to listeners.

Every line is one JSON object `{"v": 1, "t": <unix time>, "kind": ..., ...}`, the dump of one of the
models below. Writers build the model (`log.emit(StepEvent(...))`) and readers get models back
(`read_events`), so a renamed or misspelt field fails where it is written — in the tests that run the
real loop — instead of silently emptying a cell in the studio. Lines are written with a single
`write` of a complete line, so a reader sees whole lines except, at worst, a torn last line while a
write is in flight (readers skip a last line without a newline; the writer cuts one off, see EventLog).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from engine.disk_full import writing

EVENT_VERSION: Final = 1  # Final keeps the literal type, so it is a valid default of v: Literal[1]


def _now() -> float:
    return round(time.time(), 3)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = EVENT_VERSION
    t: float = Field(default_factory=_now)
    stage: str | None = None


class StageStartEvent(_Event):
    """A stage began (or resumed). The tokenizer stage reports only the counters; training stages add
    their setup and data."""

    kind: Literal["stage_start"] = "stage_start"
    stage: str
    total_steps: int
    start_step: int
    resumed: bool
    device: str | None = None
    dtype: str | None = None
    dtype_reason: str | None = None
    params: int | None = None
    active_params: int | None = None  # per token: differs from params for mixture-of-experts models
    tokens_per_step: int | None = None  # the whole world's
    world_size: int | None = None  # processes training together (torchrun); None for one
    strategy: Literal["ddp", "fsdp"] | None = None
    compile: bool | None = None  # compiled, or about to measure compiling ("trial")
    compile_mode: Literal["eager", "compiled", "trial"] | None = None
    compile_reason: str | None = None
    attention: str | None = None  # the causal attention kernel ("sdpa" | "matmul")
    attention_reason: str | None = None
    peak_source: str | None = None  # where the MFU denominator came from
    init_from: str | None = None  # the checkpoint the weights started from
    data_path: str | None = None
    n_docs: int | None = None
    n_tokens: int | None = None
    blocks: int | None = None  # training sequences of max_seq_len tokens
    cache_seconds: float | None = None
    from_cache: bool | None = None  # the token cache was reused, not built
    padding_fraction: float | None = None  # SFT: share of positions that are padding


class MemoryFigures(BaseModel):
    """What engine/hardware/readings.memory_snapshot reports, in MiB (RSS on a CPU, the CUDA allocator on a GPU)."""

    model_config = ConfigDict(extra="forbid")
    rss_mb: float | None = None
    mem_alloc_mb: float | None = None
    mem_peak_mb: float | None = None
    mem_reserved_mb: float | None = None
    mem_total_mb: float | None = None
    gpu_util_pct: float | None = None


class RankMemory(MemoryFigures):
    """One process's memory in a step event of a several-process run."""

    rank: int


class StepEvent(_Event, MemoryFigures):
    """A log window closed. The memory fields are this process's (rank 0's under torchrun; `ranks` has all)."""

    kind: Literal["step"] = "step"
    stage: str
    step: int
    total_steps: int
    loss: float | None
    lr: float
    grad_norm: float | None
    tokens_per_s: float
    samples_per_s: float
    mfu: float | None = Field(default=None, ge=0.0, le=1.0)  # never above 100%: engine/peak.MfuMeter
    mfu_note: str | None = None  # why mfu is None ("peak unknown: ...")
    eta_s: float
    tokens_seen: int
    epoch: float
    skipped_nonfinite: int | None = None  # steps so far whose NaN/inf update was skipped (skip_nonfinite_steps)
    world_size: int | None = None  # tokens_per_s and samples_per_s are the world's
    ranks: list[RankMemory] | None = None  # every rank's memory, in rank order


class EvalEvent(_Event):
    kind: Literal["eval"] = "eval"
    stage: str
    step: int
    eval_loss: float | None = None
    heldout_accuracy: float | None = None
    heldout_correct: int | None = None
    heldout_total: int | None = None
    heldout_path: str | None = None


class CheckpointEvent(_Event):
    kind: Literal["checkpoint"] = "checkpoint"
    stage: str
    step: int
    path: str
    seconds: float


class SampleEvent(_Event):
    kind: Literal["sample"] = "sample"
    stage: str
    step: int
    prompt: str
    text: str


class WarningEvent(_Event):
    kind: Literal["warning"] = "warning"
    message: str


class CacheProgressEvent(_Event):
    """How far the stage's token-cache build is (only while a data file is being tokenized)."""

    kind: Literal["cache_progress"] = "cache_progress"
    stage: str
    bytes_done: int
    bytes_total: int
    mb_per_s: float
    eta_s: float | None = None


class NoteEvent(_Event):
    """Something the run found out and acted on (e.g. what compiling measured), with its figures."""

    kind: Literal["note"] = "note"
    message: str
    figures: dict[str, float | int | bool | str] = Field(default_factory=dict)


class ErrorEvent(_Event):
    kind: Literal["error"] = "error"
    message: str
    error_type: str
    traceback: str | None = None


class StageEndEvent(_Event):
    """A stage ended (finished or stopped). The tokenizer stage adds its report (engine/data/tokenizer.py)."""

    kind: Literal["stage_end"] = "stage_end"
    stage: str
    state: str
    step: int
    total_steps: int
    loss: float | None = None
    eval_loss: float | None = None
    seconds: float | None = None
    tokens_seen: int | None = None
    vocab_size: int | None = None
    source: Literal["trained", "adopted"] | None = None
    train_seconds: float | None = None
    train_lines: int | None = None
    train_chars: int | None = None
    heldout_lines: int | None = None
    heldout_chars: int | None = None
    heldout_tokens: int | None = None
    chars_per_token: float | None = None
    skipped_lines: int | None = None
    notes: list[str] | None = None


Event = Annotated[
    StageStartEvent | StepEvent | EvalEvent | CheckpointEvent | SampleEvent | WarningEvent | NoteEvent
    | CacheProgressEvent | ErrorEvent | StageEndEvent,
    Field(discriminator="kind"),
]
_EVENT = TypeAdapter(Event)
EVENT_KINDS = tuple(model.model_fields["kind"].default for model in _Event.__subclasses__())

Listener = Callable[[Event], None]


def parse_event(event: dict[str, Any]) -> Event:
    """The model of one event dict (pydantic's ValidationError when it does not fit its kind's schema)."""
    return _EVENT.validate_python(event)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def event_json(event: Event) -> str:
    """One events.jsonl line (without the newline). Unset optional fields are left out to keep lines short."""
    fields = event.model_dump(mode="python", exclude_unset=True)
    fields = {"v": event.v, "t": event.t, "kind": event.kind, **fields}
    return json.dumps({key: _clean(value) for key, value in fields.items()}, ensure_ascii=False)


class EventLog:
    """Writes events to a file (if given) and passes each one to in-process listeners (progress bars).

    Each line goes out in one unbuffered append. A line the disk had no room for is cut off again, and a
    torn line found at the end of the file when it is opened (a crash mid-write) is cut off, so that every
    line of the file stays one whole event even after the run resumes."""

    def __init__(self, path: Path | None = None, listeners: list[Listener] | None = None) -> None:
        self.path = path
        self.listeners = list(listeners or [])
        self._fd = _open_for_append(path) if path else None

    def emit(self, event: Event) -> Event:
        if self._fd is not None:
            self._append((event_json(event) + "\n").encode("utf-8"))
        for listener in self.listeners:
            listener(event)
        return event

    def _append(self, line: bytes) -> None:
        assert self._fd is not None and self.path is not None
        written = 0
        try:
            with writing(self.path):
                while written < len(line):
                    written += os.write(self._fd, line[written:])
        except OSError:
            if written:
                with suppress(OSError):  # the part that fitted must not stay as a torn line
                    os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_for_append(path: Path) -> int:
    """The file opened for appending, with a torn last line (no newline) cut off."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    size = end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end < size:
        with writing(path):
            os.ftruncate(fd, end)
    return fd


def mfu_text(step: StepEvent | None) -> str:
    """A step's MFU for people: '41.3%', 'peak unknown' (the reason is in mfu_note), or '-'."""
    if step is None:
        return "-"
    if step.mfu is not None:
        return f"{step.mfu:.1%}"
    return "peak unknown" if step.mfu_note else "-"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_event(event: Event) -> str | None:
    """One human line for an event (train.log of a detached run), or None for events not worth a line."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.t))
    stage = event.stage or ""
    if isinstance(event, StepEvent):
        return (f"{clock} {stage} step {event.step}/{event.total_steps} loss {_num(event.loss, '.4f')} "
                f"lr {_num(event.lr, '.2e')} {_num(event.tokens_per_s, ',.0f')} tok/s mfu {mfu_text(event)} "
                f"eta {_num(event.eta_s, '.0f')}s")
    if isinstance(event, EvalEvent):
        values = event.model_dump(include={"eval_loss", "heldout_accuracy", "heldout_correct", "heldout_total"},
                                  exclude_none=True)
        fields = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        return f"{clock} {stage} step {event.step} eval: {fields}"
    if isinstance(event, CheckpointEvent):
        return f"{clock} {stage} checkpoint step {event.step} -> {event.path} ({_num(event.seconds, '.2f')}s)"
    if isinstance(event, StageStartEvent):
        return f"{clock} {stage} stage start: {event.total_steps} steps"
    if isinstance(event, StageEndEvent):
        return f"{clock} {stage} stage end: {event.state}"
    if isinstance(event, (WarningEvent, ErrorEvent, NoteEvent)):
        return f"{clock} {event.kind}: {event.message}"
    return None


def plain_log_listener(stream: IO[str]) -> Listener:
    def on_event(event: Event) -> None:
        line = format_event(event)
        if line:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed terminal must not stop training

    return on_event


def read_events(path: Path, offset: int = 0, max_bytes: int | None = None) -> tuple[list[Event], int]:
    """Complete events from byte `offset` on, and the offset to continue from (a torn last line waits).

    max_bytes bounds one read (a watcher opened on a week-long run must not load the whole file at
    once); a single line longer than that is still read to its end. A line that is not an event of
    this schema (mangled by a crash mid-write, or written by a newer version) is skipped: a reader
    must keep following the run.
    """
    events: list[Event] = []
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            if max_bytes is None:
                data = handle.read()
            else:
                data = handle.read(max_bytes)
                while data and b"\n" not in data and len(data) % max_bytes == 0:
                    more = handle.read(max_bytes)
                    if not more:
                        break
                    data += more
    except FileNotFoundError:
        return events, offset
    end = data.rfind(b"\n") + 1
    for raw in data[:end].splitlines():
        if raw.strip():
            try:
                events.append(_EVENT.validate_json(raw))
            except ValidationError:
                continue
    return events, offset + end


def iter_events(path: Path) -> Iterator[Event]:
    yield from read_events(path)[0]
