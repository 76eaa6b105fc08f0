"""How the studio shows a value, the same in the plain-terminal views and in every tab.

A run state has one colour wherever it appears (runs table, monitor head, stage bars, `logs`), and a
number that is not there yet (no step logged, no eval run) is one dash, never "None", "n/a" or "—".
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from engine.api import RunState

MISSING = "-"  # a value not known yet; a plain dash keeps the runs table's columns narrow at 80x24

_COLOUR = {
    RunState.QUEUED: "cyan", RunState.RUNNING: "green", RunState.STOPPING: "yellow", RunState.STOPPED: "yellow",
    RunState.FINISHED: "green", RunState.FAILED: "red", RunState.CRASHED: "red", RunState.BROKEN: "red",
    RunState.PENDING: "dim", RunState.UNKNOWN: "",
}
# Bold marks the two outcomes a glance at a list of runs is looking for: done, and died without a word.
_BOLD = frozenset({RunState.FINISHED, RunState.CRASHED})


def num(value: Any, spec: str = "") -> str:
    """`value` formatted with `spec` ('.4f', ',.0f'...), or MISSING when there is none."""
    return MISSING if value is None else format(value, spec)


def text_or_missing(value: Any) -> str:
    """A name that may be absent (a stage before the first one starts), or MISSING."""
    return str(value) if value else MISSING


def state_colour(state: str) -> str:
    """The state's colour alone: a progress bar's fill."""
    return _COLOUR.get(RunState.parse(state), "")


def state_style(state: str) -> str:
    """The style of the state's word: its colour, bold for FINISHED and CRASHED."""
    state = RunState.parse(state)
    colour = _COLOUR.get(state, "")
    return f"bold {colour}" if state in _BOLD else colour


def state_text(state: str) -> Text:
    return Text(str(state), style=state_style(state))


def counted(n: int, noun: str) -> str:
    """"1 piece", "2 pieces": a count with its noun in the right number (English plurals in -s)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def reply_note(pieces: int, seconds: float, stopped: bool) -> str:
    """The line under a chat reply: how many text pieces it streamed and how fast ("" for an empty reply)."""
    if not pieces:
        return ""
    rate = pieces / seconds if seconds > 0 else 0.0
    return f"{'stopped · ' if stopped else ''}{counted(pieces, 'piece')} · {rate:.1f}/s"
