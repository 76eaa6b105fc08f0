"""Small async helpers shared by the studio tests."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from textual.pilot import Pilot


async def ready(pilot: Pilot) -> None:
    """Wait until the five lazily mounted tab panes exist and the first scans are done."""
    for _ in range(400):
        if len(pilot.app.query("Pane")) == 5:
            break
        await pilot.pause(0.01)
    await pilot.pause()
    await settle(pilot)


async def settle(pilot: Pilot) -> None:
    """Wait for the workers that finish (the monitor's follower never does) and their messages."""
    await until(pilot, lambda: all(w.is_finished for w in pilot.app.workers if w.group != "monitor-follow"),
                what="workers to finish")
    await pilot.pause()


async def until(pilot: Pilot, condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Let the app run until condition() holds (worker threads post from outside the event loop)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)
        await asyncio.sleep(0)
