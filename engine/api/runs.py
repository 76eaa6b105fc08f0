"""A run's life from outside it: what the CLI and the studio call to start, resume, stop, delete, list and watch runs.

Each function takes a run directory (or a spec the user typed) and does the whole job, refusals included,
so the command line and the studio say the same thing in the same words. Light at import: the engine's
training code is imported when a run is executed here, not before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from engine.config import Preset, load_preset
from engine.errors import PresetError
from engine.events import Listener
from engine.runs.liveness import effective_state
from engine.runs.run import Run, read_status
from engine.runs.run_dir import RunSummary, find_run, latest_run_of, list_runs, new_run, summarize
from engine.runs.state import RunState

__all__ = ["Run", "RunState", "RunSummary", "StopReply", "check", "delete", "detach", "effective_state", "execute",
           "find_run", "latest_run_of", "launch", "list_runs", "new_run", "read_status", "reserve_resume",
           "resume_detached", "resume_preset", "resume_refusal", "runs", "stop", "summarize"]


def check(preset: Preset, source: str) -> None:
    """What the stages will read, checked before anything is launched (data files, tokenizer folder, from_weight
    checkpoints); a PresetError names the file and field."""
    from engine.runs.pipeline import preflight

    preflight(preset, source)


def launch(preset: Preset, source: str | None = None) -> Run:
    """Check the preset (when `source` names where it came from), create its run directory and start it
    detached; returns at once."""
    if source is not None:
        check(preset, source)
    run = new_run(preset)
    detach(run)
    return run


def detach(run: Run, *, resume: bool = False) -> int:
    """Start (or continue) the run in the background, immune to the terminal closing; returns its pid."""
    from engine.runs.execute import start_detached

    return start_detached(run, resume=resume)


def execute(run: Run, *, resume: bool, log: IO[str], display: Sequence[Listener] = ()) -> RunState:
    """Run it in this process's care until it ends (engine.runs.execute: one process here, or torchrun)."""
    from engine.runs.execute import execute as run_here

    return run_here(run, resume=resume, log=log, display=display)


def reserve_resume(run_dir: Path, world_overrides: Sequence[str] = ()) -> tuple[Run, list[str]]:
    """Make a stopped, failed or crashed run ready to continue: RunBusy when it is live or being started (checked
    under the run lock). A finished run may be resumed too: its stages are done, so it finishes at once (a node of
    a several-node job that finished while the job failed rejoins that way). `world_overrides`
    (`distributed.nproc_per_node=4` ...) resume it on another number of processes, with the accumulation that
    keeps each step's global batch; returns the run and a line per setting so changed."""
    run = Run(run_dir)
    notes: list[str] = []
    changed: Preset | None = None
    if world_overrides:  # checked before the run is reserved; written once it is
        from engine.runs.launch import keep_global_batch

        changed, notes = keep_global_batch(run.preset, load_preset(run.dir / "preset.toml", list(world_overrides)))
    run.reserve()
    if changed is not None:
        run.replace_preset(changed)
    return run, notes


def resume_refusal(run_id: str, state: RunState) -> str | None:
    """Why the studio's resume key does nothing for a run shown in `state`, or None. (The engine decides again
    when the resume runs: a table is a poll behind, and a live run is refused then, under its lock.)"""
    if state == RunState.FINISHED:
        return f"{run_id} finished; launch its preset again for a new run"
    if state.live:
        return f"{run_id} is {state}; nothing to resume"
    return None


def resume_detached(run_dir: Path) -> tuple[Run, int]:
    """The studio's resume: reserve the run, then start it in the background."""
    run, _ = reserve_resume(run_dir)
    return run, detach(run, resume=True)


def resume_preset(preset: Preset) -> Path:
    """The newest run of this preset (`run PRESET --resume`), or a PresetError saying there is none."""
    found = latest_run_of(preset.name, preset.out_dir)
    if found is None:
        raise PresetError(f"no earlier run of preset {preset.name!r} under {preset.out_dir} to resume; "
                          f"start one with: minimind-studio run {preset.name}")
    return found


@dataclass(frozen=True)
class StopReply:
    asked: bool  # a stop was requested now (False: nothing to stop, or it is already stopping)
    message: str


def stop(run_dir: Path) -> StopReply:
    """Ask a live run to finish its step, write a checkpoint and exit."""
    run = Run(run_dir)
    state = run.state
    if not state.live:
        return StopReply(False, f"{run.name} is not running ({state}); nothing to stop")
    if state == RunState.STOPPING:
        return StopReply(False, f"{run.name} is already stopping: it writes a checkpoint and exits")
    run.request_stop()
    return StopReply(True, f"asked {run.name} to stop: it finishes the current step, writes a checkpoint and exits. "
                           f"Resume later with: minimind-studio resume {run.name}")


def delete(run_dir: Path) -> None:
    """Remove a run with its checkpoints and logs; RunBusy (with what to do) if it is live or being started."""
    from engine.runs.manage import delete_run

    delete_run(run_dir)


def runs(out_dir: str | Path = "runs") -> list[RunSummary]:
    """A summary of every run under out_dir, oldest first (the CLI's `runs` and the studio's table, cheap enough
    for 1 Hz); a run whose files cannot be read is a `broken` row, not a failure of the whole listing."""
    rows = []
    for run_dir in list_runs(out_dir):
        try:
            rows.append(summarize(run_dir))
        except (OSError, ValueError, PresetError):  # an unreadable directory, a hand-edited preset.toml
            rows.append(RunSummary(run_dir, "?", RunState.BROKEN, None, 0, 0, None, None, None, None, None))
    return rows
