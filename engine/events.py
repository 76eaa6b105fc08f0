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
from typing import Any, Callable, Iterator

EVENT_VERSION = 1
EVENT_KINDS = ("stage_start", "step", "eval", "checkpoint", "sample", "warning", "error", "stage_end")

Listener = Callable[[dict[str, Any]], None]


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


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete events from byte `offset` on, and the offset to continue from (a torn last line waits)."""
    events: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
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
