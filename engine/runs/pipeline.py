"""Run a preset's stages in order inside one run directory: tokenizer -> pretrain -> sft.

Owns the run's lifecycle on disk (status.json states, the events file, stop requests and signals);
the stages themselves live in engine.data.tokenizer and engine.train.loop.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.atomic import publish_dir, write_json_atomic
from engine.checkpoints.checkpoint import Checkpoint, latest_checkpoint, tidy_after_kill
from engine.checkpoints.lookup import check_architecture, newest_matching_checkpoint, resolve_checkpoint
from engine.config import Preset, StageName, load_preset, resolve_path
from engine.data.tokenizer_files import copy_tokenizer
from engine.disk_full import disk_full_error, release_reserve
from engine.errors import EngineError, PresetError
from engine.events import (
    ErrorEvent,
    EvalEvent,
    Event,
    EventLog,
    Listener,
    StageEndEvent,
    StageStartEvent,
    StepEvent,
    WarningEvent,
)
from engine.runs.run_dir import (
    Heartbeat,
    RunLock,
    claim_status,
    handling_stop_signals,
    read_status,
    stop_requested,
    write_status,
)
from engine.runs.state import RunState
from engine.runs.tracking import SwanlabTracker
from engine.train.distributed import World

# How often step events refresh status.json (each refresh is an fsync'd file replace).
STATUS_REFRESH_S = 2.0


@dataclass
class PipelineResult:
    run_dir: Path
    state: RunState  # finished | stopped | failed
    stages: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class _StopFlag:
    """Set by SIGTERM/SIGINT or control/stop; the loop checkpoints and exits at the next step boundary."""

    def __init__(self, run_dir: Path, writes_status: bool = True) -> None:
        self.run_dir, self.writes_status = run_dir, writes_status
        self.signalled: str | None = None
        self.announced = False

    def __call__(self) -> bool:
        stopping = self.signalled is not None or stop_requested(self.run_dir)
        if stopping and not self.announced:
            self.announced = True
            if self.writes_status:
                write_status(self.run_dir, state=RunState.STOPPING)
        return stopping

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.signalled = signal.Signals(signum).name


def _status_listener(run_dir: Path) -> Listener:
    last = [0.0]

    def on_event(event: Event) -> None:
        if isinstance(event, StepEvent) and time.time() - last[0] >= STATUS_REFRESH_S:
            last[0] = time.time()
            write_status(run_dir, step=event.step, total_steps=event.total_steps, loss=event.loss,
                         tokens_per_s=event.tokens_per_s, eta_s=event.eta_s)
        elif isinstance(event, StageStartEvent):
            write_status(run_dir, stage=event.stage, step=event.start_step, total_steps=event.total_steps)
        elif isinstance(event, StageEndEvent):
            write_status(run_dir, step=event.step, total_steps=event.total_steps,
                         **({"loss": event.loss} if event.loss is not None else {}))

    return on_event


def prepare_tokenizer(preset: Preset, run_dir: Path, log: EventLog, resume: bool) -> dict[str, Any] | None:
    """Stage 1: train (or adopt) the tokenizer into run_dir/tokenizer. Returns the report."""
    from engine.data.tokenizer import adopt_tokenizer, train_tokenizer

    out = run_dir / "tokenizer"
    if resume and (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file():
        return None
    cfg = preset.tokenizer
    log.emit(StageStartEvent(stage="tokenizer", total_steps=1, start_step=0, resumed=False))
    write_status(run_dir, stage="tokenizer", step=0, total_steps=1)
    if cfg.from_dir:
        report = adopt_tokenizer(Path(cfg.from_dir), out, heldout_path=Path(cfg.data_path), heldout_lines=cfg.heldout_lines)
    else:
        report = train_tokenizer(
            Path(cfg.data_path), out, preset.model.vocab_size, heldout_lines=cfg.heldout_lines,
            max_train_chars=cfg.max_train_chars, model_max_length=cfg.model_max_length,
            on_bad_line=tokenizer_bad_line_rule(preset),
        )
    summary = report.to_dict()
    log.emit(StageEndEvent(stage="tokenizer", state=RunState.FINISHED, step=1, total_steps=1, **summary))
    return summary


def tokenizer_bad_line_rule(preset: Preset) -> Literal["error", "skip"]:
    """tokenizer.on_bad_line, unless the tokenizer reads pretraining's own file and pretraining skips bad lines:
    then the tokenizer skips them too (stopping on a line the next stage will skip anyway helps no one)."""
    cfg = preset.tokenizer
    same_file = "pretrain" in preset.stages and resolve_path(cfg.data_path) == resolve_path(preset.pretrain.data_path)
    return "skip" if same_file and preset.pretrain.on_bad_line == "skip" else cfg.on_bad_line


def from_weight_checkpoint(stage: StageName, preset: Preset) -> Checkpoint | None:
    """The checkpoint `<stage>.from_weight` names (architecture checked), or None when it is empty."""
    spec = preset.stage(stage).from_weight
    if not spec:
        return None
    if spec == "latest":
        ckpt = newest_matching_checkpoint(preset.out_dir, "pretrain", preset.model)
    else:
        ckpt = resolve_checkpoint(spec, preset.out_dir, prefer=("pretrain", "sft"))
    check_architecture(ckpt, preset.model, f"{stage}.from_weight")
    return ckpt


def resolve_init(stage: StageName, preset: Preset, run_dir: Path) -> Checkpoint | None:
    """Where a training stage's weights start: from_weight, else this run's previous stage, else random."""
    if preset.stage(stage).from_weight:
        return from_weight_checkpoint(stage, preset)
    return latest_checkpoint(run_dir / "checkpoints" / "pretrain") if stage == "sft" else None


def preflight(preset: Preset, source: str) -> None:
    """Check what the stages will read before anything is launched; a PresetError names file and field."""
    from engine.errors import CheckpointError

    def missing(field: str, value: str, what: str) -> PresetError:
        return PresetError(f"{source}: {field} = {value!r}: {what}. Fix the path in the preset or with --set {field}=...")

    if "tokenizer" in preset.stages or preset.tokenizer.from_dir:
        # Adopting opens only the folder (tokenizer.data_path, when there, just measures chars/token);
        # training opens tokenizer.data_path.
        if preset.tokenizer.from_dir:
            from engine.data.tokenizer_files import TOKENIZER_FILES

            folder = resolve_path(preset.tokenizer.from_dir)
            if not any((folder / name).is_file() for name in TOKENIZER_FILES):
                what = "no tokenizer files there (tokenizer.json, tokenizer_config.json...)" if folder.is_dir() else "folder not found"
                raise missing("tokenizer.from_dir", preset.tokenizer.from_dir, what)
        elif not resolve_path(preset.tokenizer.data_path).is_file():
            raise missing("tokenizer.data_path", preset.tokenizer.data_path, "file not found")
    for stage in (s for s in preset.stages if s != "tokenizer"):
        cfg = preset.stage(stage)
        for name in ("data_path", "heldout_path"):
            value = getattr(cfg, name)
            if value and not resolve_path(value).is_file():
                raise missing(f"{stage}.{name}", value, "file not found")
        try:
            from_weight_checkpoint(stage, preset)
        except CheckpointError as error:
            raise PresetError(f"{source}: {error}") from None


def check_vocab(preset: Preset, tokenizer_dir: Path, log: EventLog) -> None:
    from engine.data.tokenizer import tokenizer_vocab_size

    size = tokenizer_vocab_size(tokenizer_dir)
    if size > preset.model.vocab_size:
        raise PresetError(
            f"the tokenizer in {tokenizer_dir} has {size} tokens but model.vocab_size is {preset.model.vocab_size}; "
            f"set model.vocab_size = {size} (or train a tokenizer of that size)"
        )
    if size < preset.model.vocab_size:
        log.emit(WarningEvent(message=f"tokenizer has {size} tokens, model.vocab_size is {preset.model.vocab_size}: "
                                         f"{preset.model.vocab_size - size} embedding rows stay unused"))


def run_pipeline(
    run_dir: Path, *, resume: bool = False, listeners: list[Listener] | None = None, stages: list[StageName] | None = None
) -> PipelineResult:
    """Execute the frozen preset in run_dir. On resume, finished stages are skipped and the current one continues.
    The run directory is locked for the duration: a second process on the same run raises RunBusy."""
    preset = load_preset(run_dir / "preset.toml")
    with RunLock(run_dir), Heartbeat(run_dir):
        return _run_locked(run_dir, preset, resume, listeners or [], stages)


def run_rank(run_dir: Path, preset: Preset, *, resume: bool, listeners: list[Listener], world: World) -> PipelineResult:
    """One rank of a torchrun job: the stages without the run lock and heartbeat, which the supervisor holds
    for the whole job (engine/runs/launch.py)."""
    return _run_locked(run_dir, preset, resume, listeners, None, world)


def _run_locked(run_dir: Path, preset: Preset, resume: bool, listeners: list[Listener], stages: list[StageName] | None,
                world: World | None = None) -> PipelineResult:
    """The stages, in this process. Under torchrun every rank runs this (engine/runs/ranks.py): rank 0 owns the
    run directory (events, status, tokenizer, checkpoints) and the others follow it with a silent log."""
    from engine.train.loop import train_stage

    world = world or World.single()
    if not world.is_main:
        return _follow(run_dir, preset, resume, stages, world, train_stage)
    log = EventLog(run_dir / "events.jsonl", [_status_listener(run_dir), *listeners])
    tracker = SwanlabTracker.create(preset, run_dir, log)  # None unless [tracking.swanlab] is enabled
    if tracker:
        log.listeners.append(tracker)
    stop = _StopFlag(run_dir)
    result = PipelineResult(run_dir, RunState.FINISHED)
    done = world.broadcast(set(read_status(run_dir).get("stages_done", [])) if resume else set())
    if resume and read_status(run_dir).get("state") != RunState.QUEUED:
        # The stop that ended the last session is spent (engine.runs.manage.reserve_start spent it already for a
        # queued run: a stop found now was given while this process started, and is obeyed).
        (run_dir / "control" / "stop").unlink(missing_ok=True)
    if resume:  # what a killed save left (it may have been the stage's last save): nothing waits for the next one
        for stage_dir in (run_dir / "checkpoints").glob("*"):
            tidy_after_kill(stage_dir)
    # Under torchrun the supervisor (engine/runs/launch.py) has claimed the run: its pid outlives a rank's.
    (write_status if world.distributed else claim_status)(run_dir, state=RunState.RUNNING, exit_reason=None,
                                                          resumed=resume, stages_done=sorted(done))
    try:
        with handling_stop_signals(stop.on_signal):
            for stage in stages or preset.stages:
                if stage in done:
                    continue
                if stage == "tokenizer":
                    result.stages["tokenizer"] = prepare_tokenizer(preset, run_dir, log, resume)
                    share_tokenizer(world, run_dir)
                else:
                    tokenizer_dir = run_dir / "tokenizer"
                    init = world.broadcast(resolve_init(stage, preset, run_dir))
                    if not (tokenizer_dir / "tokenizer.json").is_file():
                        _adopt_missing_tokenizer(preset, run_dir, init, log)
                    share_tokenizer(world, run_dir)
                    check_vocab(preset, tokenizer_dir, log)
                    outcome = train_stage(stage, preset, run_dir, tokenizer_dir, log, init_from=init,
                                          resume=resume, should_stop=stop, world=world)
                    result.stages[stage] = outcome
                    if outcome.state == RunState.STOPPED:
                        result.state = RunState.STOPPED
                        break
                    if preset.stage(stage).heldout_path:
                        outcome.extra["heldout"] = score_heldout(stage, preset, run_dir, outcome, log)
                done.add(stage)
                write_status(run_dir, stages_done=sorted(done))
    except Exception as error:  # noqa: BLE001 - every failure is recorded in the run dir, then re-raised
        full = disk_full_error(error, run=run_dir.name)
        if full:
            release_reserve(run_dir)  # the room kept for this very record
        failure = full or error
        message = failure_message(failure, run_dir)
        result.state, result.error = RunState.FAILED, message
        # Best effort: on a full disk these writes can fail as well, and must not hide the failure they record.
        with suppress(OSError):
            log.emit(ErrorEvent(message=message, error_type=type(failure).__name__, traceback=traceback.format_exc()))
        with suppress(OSError):
            write_status(run_dir, state=RunState.FAILED, exit_reason=message)
        if tracker:
            tracker.close(RunState.FAILED, message)
        log.close()
        if full:
            raise full from error
        raise
    reason = f"stop requested ({stop.signalled or 'control/stop'})" if result.state == RunState.STOPPED else "all stages done"
    write_status(run_dir, state=result.state, exit_reason=reason)
    if tracker:
        tracker.close(result.state)
    log.close()
    return result


def _follow(run_dir: Path, preset: Preset, resume: bool, stages: list[StageName] | None, world: World,
            train_stage: Any) -> PipelineResult:
    """A rank other than 0: the same stages in the same order, every decision received from rank 0 (what is
    done, the starting weights, the tokenizer), nothing written to the run directory. Failures are left to
    torchrun and the supervisor, which name the rank."""
    result = PipelineResult(run_dir, RunState.FINISHED)
    silent = EventLog()
    stop = _StopFlag(run_dir, writes_status=False)
    done = world.broadcast(None)
    with handling_stop_signals(stop.on_signal):
        for stage in stages or preset.stages:
            if stage in done:
                continue
            if stage == "tokenizer":
                share_tokenizer(world, run_dir)
                continue
            init = world.broadcast(None)
            share_tokenizer(world, run_dir)
            outcome = train_stage(stage, preset, run_dir, run_dir / "tokenizer", silent, init_from=init,
                                  resume=resume, should_stop=stop, world=world)
            result.stages[stage] = outcome
            if outcome.state == RunState.STOPPED:
                result.state = RunState.STOPPED
                break
    if world.is_local_main and not (run_dir / "events.jsonl").exists():
        # Another node's run directory (rank 0 writes elsewhere): its supervisor reads how its ranks ended here.
        write_status(run_dir, state=result.state, exit_reason="this node's processes are done")
    return result


def share_tokenizer(world: World, run_dir: Path) -> None:
    """Rank 0's run_dir/tokenizer on every node: sent over the process group (a few MB) and written by each
    node's first process where it is missing, so nodes need no shared filesystem."""
    if not world.distributed:
        return
    folder = run_dir / "tokenizer"
    files = world.broadcast({p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if world.is_main else None)
    if world.is_local_main and not world.is_main and not (folder / "tokenizer.json").is_file():
        tmp = run_dir / f".tokenizer.tmp-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        publish_dir(tmp, folder, keep_existing=True)
    world.barrier()  # every node has it before anyone reads it


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


def score_heldout(stage: StageName, preset: Preset, run_dir: Path, outcome: Any, log: EventLog) -> dict[str, Any]:
    """Greedy exact-match accuracy of the stage's final checkpoint on its held-out questions."""
    from engine.chat.session import ChatSession, exact_match, read_heldout
    from engine.checkpoints.checkpoint import read_checkpoint

    heldout_path = preset.stage(stage).heldout_path
    assert heldout_path is not None  # the pipeline scores only a stage that names its held-out file
    path = Path(heldout_path)
    items = read_heldout(path)
    session = ChatSession(read_checkpoint(outcome.checkpoint), device=preset.runtime.device)
    report = exact_match(session, items)
    write_json_atomic(run_dir / f"heldout_{stage}.json", report)
    log.emit(EvalEvent(stage=stage, step=outcome.step, heldout_accuracy=report["accuracy"],
                       heldout_correct=report["correct"], heldout_total=report["total"], heldout_path=str(path)))
    return {k: report[k] for k in ("accuracy", "correct", "total", "by_kind")}


def _adopt_missing_tokenizer(preset: Preset, run_dir: Path, init: Checkpoint | None, log: EventLog) -> None:
    """No tokenizer stage in this run: take the preset's from_dir, else the starting checkpoint's."""
    if preset.tokenizer.from_dir:
        prepare_tokenizer(preset, run_dir, log, resume=False)
    elif init is not None:
        copy_tokenizer(init.tokenizer_dir, run_dir / "tokenizer")
    else:  # config validation makes this unreachable; keep the message for hand-built presets
        raise PresetError("no tokenizer: add 'tokenizer' to stages or set tokenizer.from_dir")
