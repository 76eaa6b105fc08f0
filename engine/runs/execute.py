"""How a run is executed: one entry, three modes, and the one place that decides if it needs several processes.

    foreground   the CLI's `run` / `resume` without --detach: `execute(run, ...)` in the user's terminal, with a
                 progress display; train.log gets the plain lines
    detached     `start_detached(run)` starts `python -m engine RUN_DIR` in its own session (immune to the
                 terminal closing), which calls the same `execute` with its stdout on train.log
    rank         `python -m engine RUN_DIR --rank`: what torchrun starts on every rank of a job the supervisor
                 (engine/runs/launch.py) runs; `execute_rank`

`execute` runs the stages in this process when the run's world is one process, and otherwise runs torchrun
under the supervisor, feeding the events rank 0 writes to the same display.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

from engine.events import Listener, plain_log_listener
from engine.runs.run import Run
from engine.runs.run_dir import engine_env
from engine.runs.state import RunState


def several_processes(run: Run) -> bool:
    """Does this run need torchrun? The only place that asks."""
    from engine.runs.launch import world_size

    return world_size(run.preset) > 1


def execute(run: Run, *, resume: bool, log: IO[str], display: Sequence[Listener] = ()) -> RunState:
    """Run (or resume) the run until it finishes, stops or fails; returns how it ended. `log` gets one plain line
    per event (train.log); `display` listeners get the events as they happen. A failure is recorded in the run
    directory and raised; a failure of a several-process job is recorded and returned as FAILED."""
    if several_processes(run):
        return _supervise(run, resume, log, display)
    from engine.runs.pipeline import run_pipeline

    return run_pipeline(run, resume=resume, listeners=[*display, plain_log_listener(log)]).state


def _supervise(run: Run, resume: bool, log: IO[str], display: Sequence[Listener]) -> RunState:
    """torchrun under the supervisor; its output (rank 0's plain lines and torchrun's own) to `log`, and the
    events rank 0 appends to events.jsonl to the display. Ctrl-C asks every rank to stop after the same step."""
    from engine.runs.launch import Supervisor, follow_events

    done = threading.Event()
    follower = follow_events(run.dir, list(display), done) if display else None
    try:
        return Supervisor(run, output=log).supervise(resume=resume)
    finally:
        done.set()
        if follower:
            follower.join()


def execute_rank(run: Run, *, resume: bool) -> RunState:
    """One rank of a torchrun job: join the process group, run the stages (rank 0 writes the run directory and
    prints the plain lines to torchrun's output; the others follow with a quiet context), leave the group.
    `record` writes a failing rank's exception to torchrun's error file, where the supervisor finds the cause."""
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def rank() -> RunState:
        from engine.hardware.device import resolve_precision
        from engine.runs.pipeline import run_stages
        from engine.train.distributed import World

        preset = run.preset
        device_type = resolve_precision(preset.runtime.device, preset.runtime.dtype).device.type
        world = World.from_env(device_type, preset.distributed.strategy, preset.distributed.timeout_s)
        listeners = [plain_log_listener(sys.stdout)] if world.is_main else []
        # A failing rank leaves the group as it dies: closing it first would make the others' errors ("connection
        # closed by peer") look older than this rank's own, which @record is about to write. Ranks that exit without
        # leaving the group intermittently abort at exit, so a rank that succeeds leaves it.
        result = run_stages(run, resume=resume, listeners=listeners, world=world)
        world.close()
        if world.is_main:
            print(f"run {result.state}", flush=True)
        return result.state

    state = rank()
    assert state is not None  # `record` passes the function's return value through
    return state


def start_detached(run: Run, resume: bool = False) -> int:
    """Start the run in its own session (immune to the terminal's SIGHUP), stdin closed, output to
    train.log. Returns the pid at once."""
    command = [sys.executable, "-m", "engine", str(run.dir)] + (["--resume"] if resume else [])
    with open(run.dir / "train.log", "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=engine_env(), close_fds=True)
    return process.pid


def rank_command(run_dir: str, resume: bool) -> list[str]:
    """What torchrun runs on every rank (after its own flags)."""
    return ["-m", "engine", run_dir, "--rank"] + (["--resume"] if resume else [])
