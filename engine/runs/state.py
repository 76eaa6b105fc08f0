"""The states a run (and each stage in it) can be in: one vocabulary for the engine, the CLI and the studio.

status.json's "state" and a stage_end event's "state" hold these values as plain strings: that is the
on-disk contract, and a `RunState` *is* its string (a `str` Enum), so it is written, compared and
shown as one. Torch-free, so the studio can import it at start-up.

A run's own states, in the order it goes through them (the transitions between them: engine/runs/run.py):

    queued     created by the launcher, or reserved for a resume (engine.runs.run.Run.reserve); no process has
               started its stages yet (one may have claimed it: its pid is recorded, with its start time)
    running    the run process owns the directory and is working through its stages
    stopping   a stop was requested (control/stop or a signal); it finishes the step and checkpoints
    stopped    terminal, resumable: it stopped on request after writing a checkpoint
    finished   terminal: every stage is done
    failed     terminal, resumable: the run process caught an error and wrote why (exit_reason)

States only readers give, never written to status.json:

    crashed    terminal, resumable: status.json says queued/running/stopping but its process is gone
               without a word (kill -9, a reboot) or its heartbeat went stale
    unknown    status.json is missing or names no state we know
    broken     the run directory cannot be read (a hand-edited preset.toml)

A stage that has not started is `pending`; a started stage is `running`, then `finished` or
`stopped` (its stage_end event says which), or takes the run's `failed`/`crashed` if it died.
"""

from __future__ import annotations

from enum import Enum


class RunState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"
    CRASHED = "crashed"
    UNKNOWN = "unknown"
    BROKEN = "broken"
    PENDING = "pending"

    # str() and f-strings give the value ("running"), as for a plain string: Python 3.11 changed the
    # default of a mixed-in Enum to "RunState.RUNNING", which must never reach a table or a message.
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)

    @classmethod
    def parse(cls, value: object) -> RunState:
        """The state a status.json value names; UNKNOWN for a missing or unknown one (a newer writer, a hand edit)."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN

    @property
    def live(self) -> bool:
        """A process may still be writing the run (crashed is not live: nobody is)."""
        return self in LIVE_STATES

    @property
    def terminal(self) -> bool:
        """The run will not change again by itself (stopped, failed and crashed can still be resumed)."""
        return self in TERMINAL_STATES


LIVE_STATES = frozenset({RunState.QUEUED, RunState.RUNNING, RunState.STOPPING})
TERMINAL_STATES = frozenset({RunState.STOPPED, RunState.FINISHED, RunState.FAILED, RunState.CRASHED})
