"""Run a preset's stages in order inside one run directory: one loop over the stage protocol (engine.stages).

`run_pipeline` is a run in this process (foreground or detached, one process): it holds the run lock and
heartbeat and claims the run. `run_stages` is the loop itself, which every rank of a torchrun job runs too
(engine.runs.execute.execute_rank): rank 0 owns the run directory (events, status, tokenizer, checkpoints); the others run
the same loop with a quiet context (a silent log, no status writes), receiving every decision from rank 0.
"""

from __future__ import annotations

import time
import traceback
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from engine.checkpoints.checkpoint import tidy_after_kill
from engine.config import Preset
from engine.disk_full import disk_full_error, release_reserve
from engine.errors import EngineError, RunStateError
from engine.events import ErrorEvent, Event, EventLog, Listener, StageEndEvent, StageStartEvent, StepEvent
from engine.runs.run import Run
from engine.runs.run_dir import handling_stop_signals
from engine.runs.state import RunState
from engine.runs.tracking import SwanlabTracker
from engine.stages import StageContext, StageResult, stage_named
from engine.train.distributed import World

# How often step events refresh status.json (each refresh is an fsync'd file replace).
STATUS_REFRESH_S = 2.0


@dataclass
class PipelineResult:
    run_dir: Path
    state: RunState  # finished | stopped | failed
    stages: dict[str, StageResult] = field(default_factory=dict)
    error: str | None = None


def run_pipeline(run: Run | Path, *, resume: bool = False, listeners: list[Listener] | None = None,
                 stages: list[str] | None = None) -> PipelineResult:
    """Execute the frozen preset in this process. On resume, finished stages are skipped and the current one
    continues. The run directory is locked for the duration: a second process on the same run raises RunBusy."""
    run = run if isinstance(run, Run) else Run(run)
    with run.lock(), run.heartbeat():
        run.claim()
        return run_stages(run, resume=resume, listeners=listeners or [], world=World.single(), stages=stages)


def run_stages(run: Run, *, resume: bool, listeners: list[Listener], world: World,
               stages: list[str] | None = None) -> PipelineResult:
    """The stages, in this process, in the preset's order. Under torchrun the supervisor (engine/runs/launch.py)
    holds the lock and heartbeat and has claimed the run; rank 0 starts it."""
    main = world.is_main
    preset = run.preset
    log = EventLog(run.dir / "events.jsonl", [status_listener(run), *listeners]) if main else EventLog()
    tracker = SwanlabTracker.create(preset, run.dir, log) if main else None  # None unless [tracking.swanlab] is on
    if tracker:
        log.listeners.append(tracker)
    # Rank 0's stages already done, and which run directory it writes (the moment status.json was first written):
    # a node's first process whose directory is another one keeps that node's status (nodes need no shared disk).
    status = run.status()
    done, origin = world.broadcast((set(status.get("stages_done", [])) if resume else set(),
                                    status.get("started_at")) if main else None)
    node_status = not main and world.is_local_main and status.get("started_at") != origin
    stop = run.stop_flag(writes_status=main)
    if main:
        begin(run, resume, done)
    elif node_status:
        run.start()  # this node's processes are at work (its supervisor claimed the directory; after a restart too)
    ctx = StageContext(run.dir, preset, log, world, resume, stop)
    result = PipelineResult(run.dir, RunState.FINISHED)
    try:
        with handling_stop_signals(stop.on_signal):
            for name in stages or preset.stages:
                if name in done:
                    continue
                outcome = stage_named(name).run(ctx)
                result.stages[name] = outcome
                if outcome.state == "stopped":
                    result.state = RunState.STOPPED
                    break
                done.add(name)
                if main:
                    run.record(stages_done=sorted(done))
    except Exception as error:
        if main:  # other ranks' failures are left to torchrun and the supervisor, which name the rank
            record_failure(run, error, result, log, tracker)
        raise
    if main:
        run.end(result.state, stop.reason if result.state == RunState.STOPPED else "all stages done")
        if tracker:
            tracker.close(result.state)
        log.close()
    elif node_status:  # its supervisor reads here how this node's processes ended
        run.end(result.state, "this node's processes are done")
    return result


def begin(run: Run, resume: bool, done: set[str]) -> None:
    """Rank 0 takes the run from queued to running. On resume, what a killed save left (it may have been a
    stage's last save) is tidied first: nothing else waits for the stage's next save."""
    if resume:
        for stage_dir in (run.dir / "checkpoints").glob("*"):
            tidy_after_kill(stage_dir)
    run.start(resumed=resume, stages_done=sorted(done))


def record_failure(run: Run, error: Exception, result: PipelineResult, log: EventLog,
                   tracker: SwanlabTracker | None) -> None:
    """Write why the run failed (error event, status.json) before the error goes on up. On a full disk, the
    room kept for this very record is released first; a full disk found anywhere in the error's chain is
    what the record says."""
    full = disk_full_error(error, run=run.name)
    if full:
        release_reserve(run.dir)
    failure = full or error
    message = failure_message(failure, run.dir)
    result.state, result.error = RunState.FAILED, message
    # Best effort: on a full disk these writes can fail as well, and must not hide the failure they record.
    with suppress(OSError):
        log.emit(ErrorEvent(message=message, error_type=type(failure).__name__, traceback=traceback.format_exc()))
    with suppress(OSError, RunStateError):  # nothing may hide the failure being recorded
        run.fail(message)
    if tracker:
        tracker.close(RunState.FAILED, message)
    log.close()
    if full:
        raise full from error


def status_listener(run: Run) -> Listener:
    """status.json's progress fields from the events: stage starts and ends, and a step at most every
    STATUS_REFRESH_S (each refresh is a file replace)."""
    last = [0.0]

    def on_event(event: Event) -> None:
        if isinstance(event, StepEvent) and time.time() - last[0] >= STATUS_REFRESH_S:
            last[0] = time.time()
            run.record(step=event.step, total_steps=event.total_steps, loss=event.loss,
                       tokens_per_s=event.tokens_per_s, eta_s=event.eta_s)
        elif isinstance(event, StageStartEvent):
            run.record(stage=event.stage, step=event.start_step, total_steps=event.total_steps)
        elif isinstance(event, StageEndEvent):
            run.record(step=event.step, total_steps=event.total_steps,
                       **({"loss": event.loss} if event.loss is not None else {}))

    return on_event


def preflight(preset: Preset, source: str) -> None:
    """Check what the stages will read before anything is launched; a PresetError names file and field."""
    for name in preset.stages:
        stage_named(name).preflight(preset, source)


def failure_message(error: BaseException, run_dir: Path) -> str:
    """What status.json's exit_reason says about a failure. An EngineError's message is the user's paragraph,
    and so is a full disk anywhere in the error's chain (engine.disk_full: what to free, how to resume);
    anything else is a bug or an environment failure, so it keeps its type and its traceback goes to a file."""
    if isinstance(error, EngineError):
        return str(error)
    full = disk_full_error(error, run=run_dir.name)
    if full:
        return str(full)
    trace = run_dir / "traceback.txt"
    try:
        trace.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        kept = f"the traceback is in {trace}"
    except OSError as failed:
        kept = f"its traceback could not be written to {trace}: {failed}"
    return (f"{type(error).__name__}: {error or 'no message'} (not an input problem: a bug or an environment "
            f"failure; {kept})")

