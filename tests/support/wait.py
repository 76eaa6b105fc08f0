"""Waiting on the thing itself: poll a condition until it holds or a deadline passes, never a fixed sleep.

`wait_until` is for threads and processes (a detached run reaching a step); `until` lets a Textual app
run while it waits (worker threads post from outside the event loop). A studio test that needs "the
monitor has polled again" counts polls with `spy_event_reads` instead of sleeping through a few.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import pytest
    from textual.pilot import Pilot

T = TypeVar("T")
POLL_S = 0.01  # how often a condition is checked; the cost of a wait is the condition's time plus at most this


def wait_until(predicate: Callable[[], T], timeout: float = 60.0, what: str = "condition", poll_s: float = POLL_S) -> T:
    """Call predicate until it returns something truthy, and return that; AssertionError after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll_s)


async def until(pilot: Pilot, predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Let the app handle its messages until predicate() holds; AssertionError after timeout s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await pilot.pause(POLL_S)  # handles pending messages first, then yields to the worker threads


async def settle(pilot: Pilot) -> None:
    """Wait for the workers that finish (the monitor's follower never does) and their messages."""
    await until(pilot, lambda: all(w.is_finished for w in pilot.app.workers if w.group != "monitor-follow"),
                what="workers to finish")
    await pilot.pause()


async def ready(pilot: Pilot) -> None:
    """Wait until the studio's five lazily mounted tab panes exist and their first scans are done."""
    await until(pilot, lambda: len(pilot.app.query("Pane")) == 5, what="the five tab panes")
    await pilot.pause()  # the panes' mount handlers start their scans
    await settle(pilot)


def spy_event_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the byte offset of every events.jsonl read the studio's run watches make. Each poll of a
    watch reads once, so the list's length is a poll counter to wait on."""
    from studio import run_watch

    offsets: list[int] = []
    real = run_watch.read_events

    def spy(path: Path, offset: int = 0, max_bytes: int | None = None):
        offsets.append(offset)
        return real(path, offset, max_bytes)

    monkeypatch.setattr(run_watch, "read_events", spy)
    return offsets
