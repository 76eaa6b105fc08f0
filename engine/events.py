"""The run's append-only event stream (events.jsonl) and its fan-out to listeners.

Every line is one JSON object `{"v": 1, "t": <unix time>, "kind": ..., ...}`. Lines are written with
a single `write` of a complete line and flushed, so a reader sees whole lines except, at worst, a torn
last line while a write is in flight (readers skip a last line without a newline).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

EVENT_VERSION = 1

Listener = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------------
# The schema: one model per kind. Readers (studio, CLI, tests) validate with `parse_event`; the
# writer does not, so a schema slip can never stop a training run.


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1]
    t: float
    stage: str | None = None


class StageStartEvent(_Event):
    # Extra keys carry the stage's setup (data sizes, device, dtype, parameters); they vary by stage.
    model_config = ConfigDict(extra="allow")
    kind: Literal["stage_start"]
    stage: str
    total_steps: int
    start_step: int
    resumed: bool


class StepEvent(_Event):
    kind: Literal["step"]
    stage: str
    step: int
    total_steps: int
    loss: float | None
    lr: float
    grad_norm: float | None
    tokens_per_s: float
    samples_per_s: float
    mfu: float | None = Field(default=None, ge=0.0, le=1.0)  # never above 100%: engine/hardware.MfuMeter
    mfu_note: str | None = None  # why mfu is None ("peak unknown: ...")
    eta_s: float
    tokens_seen: int
    epoch: float
    rss_mb: float | None = None
    mem_alloc_mb: float | None = None
    mem_peak_mb: float | None = None
    mem_reserved_mb: float | None = None
    mem_total_mb: float | None = None
    gpu_util_pct: float | None = None


class EvalEvent(_Event):
    kind: Literal["eval"]
    stage: str
    step: int
    eval_loss: float | None = None
    heldout_accuracy: float | None = None
    heldout_correct: int | None = None
    heldout_total: int | None = None
    heldout_path: str | None = None


class CheckpointEvent(_Event):
    kind: Literal["checkpoint"]
    stage: str
    step: int
    path: str
    seconds: float


class SampleEvent(_Event):
    kind: Literal["sample"]
    stage: str
    step: int
    prompt: str
    text: str


class WarningEvent(_Event):
    kind: Literal["warning"]
    message: str


class CacheProgressEvent(_Event):
    """How far the stage's token-cache build is (only while a data file is being tokenized)."""

    kind: Literal["cache_progress"]
    stage: str
    bytes_done: int
    bytes_total: int
    mb_per_s: float
    eta_s: float | None = None


class NoteEvent(_Event):
    """Something the run found out and acted on (e.g. what compiling measured); figures ride along."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["note"]
    message: str


class ErrorEvent(_Event):
    kind: Literal["error"]
    message: str
    error_type: str
    traceback: str | None = None


class StageEndEvent(_Event):
    model_config = ConfigDict(extra="allow")  # the stage's report (e.g. the tokenizer's compression)
    kind: Literal["stage_end"]
    stage: str
    state: str
    step: int
    total_steps: int


EVENT_MODELS: dict[str, type[_Event]] = {
    model.model_fields["kind"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (StageStartEvent, StepEvent, EvalEvent, CheckpointEvent, SampleEvent, WarningEvent, NoteEvent,
                  CacheProgressEvent, ErrorEvent, StageEndEvent)
}
EVENT_KINDS = tuple(EVENT_MODELS)


def parse_event(event: dict[str, Any]) -> _Event:
    """Validate one event dict against its kind's model (pydantic ValidationError if it does not fit)."""
    model = EVENT_MODELS.get(event.get("kind", ""))
    if model is None:
        raise ValueError(f"unknown event kind {event.get('kind')!r}")
    return model.model_validate(event)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EventLog:
    """Writes events to a file (if given) and passes each one to in-process listeners (progress bars)."""

    def __init__(self, path: Path | None = None, listeners: list[Listener] | None = None) -> None:
        self.path = path
        self.listeners = list(listeners or [])
        self._handle = open(path, "a", encoding="utf-8") if path else None

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        event = {"v": EVENT_VERSION, "t": round(time.time(), 3), "kind": kind}
        event.update({key: _clean(value) for key, value in fields.items()})
        if self._handle:
            self._handle.write(json.dumps(event, ensure_ascii=False) + "\n")
            self._handle.flush()
        for listener in self.listeners:
            listener(event)
        return event

    def close(self) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None


def mfu_text(step: dict[str, Any]) -> str:
    """A step event's MFU for people: '41.3%', 'peak unknown' (the reason is in mfu_note), or '-'."""
    if step.get("mfu") is not None:
        return f"{step['mfu']:.1%}"
    return "peak unknown" if step.get("mfu_note") else "-"


def format_event(event: dict[str, Any]) -> str | None:
    """One human line for an event (train.log of a detached run), or None for events not worth a line."""
    clock = time.strftime("%H:%M:%S", time.localtime(event["t"]))
    kind, stage = event["kind"], event.get("stage", "")

    def num(key: str, spec: str) -> str:
        value = event.get(key)
        return "-" if value is None else format(value, spec)

    if kind == "step":
        return (f"{clock} {stage} step {event['step']}/{event['total_steps']} loss {num('loss', '.4f')} "
                f"lr {num('lr', '.2e')} {num('tokens_per_s', ',.0f')} tok/s mfu {mfu_text(event)} eta {num('eta_s', '.0f')}s")
    if kind == "eval":
        fields = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in event.items()
                          if k.startswith(("eval_", "heldout_")) and k != "heldout_path")
        return f"{clock} {stage} step {event['step']} eval: {fields}"
    if kind == "checkpoint":
        return f"{clock} {stage} checkpoint step {event['step']} -> {event['path']} ({num('seconds', '.2f')}s)"
    if kind in ("stage_start", "stage_end"):
        detail = f"{event.get('state')}" if kind == "stage_end" else f"{event.get('total_steps')} steps"
        return f"{clock} {stage} {kind.replace('_', ' ')}: {detail}"
    if kind in ("warning", "error", "note"):
        return f"{clock} {kind}: {event.get('message')}"
    return None


def plain_log_listener(stream: IO[str]) -> Listener:
    def on_event(event: dict[str, Any]) -> None:
        line = format_event(event)
        if line:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed terminal must not stop training

    return on_event


def read_events(path: Path, offset: int = 0, max_bytes: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Complete events from byte `offset` on, and the offset to continue from (a torn last line waits).

    max_bytes bounds one read (a watcher opened on a week-long run must not load the whole file at
    once); a single line longer than that is still read to its end.
    """
    events: list[dict[str, Any]] = []
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
                events.append(json.loads(raw))
            except json.JSONDecodeError:
                continue  # a line mangled by a crash mid-write; the next lines are still good
    return events, offset + end


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    yield from read_events(path)[0]
