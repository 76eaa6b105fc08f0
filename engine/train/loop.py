"""One training loop for pretraining and SFT.

The stages differ only in their data (packed text blocks vs. packed conversations with a loss mask)
and their starting weights; everything else — schedule, accumulation, precision, evaluation,
checkpoints, stop requests and resume — is shared. `train_stage` sets the stage up once
(engine/train/stage_setup.py) and runs `run_steps`, a loop that only calls things: `train_step`
(engine/train/step.py, the same step calibration times), the evaluation and sample
(engine/train/evaluation.py), the reporter (engine/train/reporting.py) and the checkpointer that decides
when to save (engine/train/checkpointer.py). The last step goes through the same eval and save code as the
periodic ones (`last_step`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from engine.checkpoints.checkpoint import Checkpoint, gather_model_state
from engine.config import Preset, StageName, TrainStage
from engine.errors import NonFiniteLoss
from engine.events import EvalEvent, EventLog, StageEndEvent
from engine.locks import WaitCancelled
from engine.model.transformer import CausalLM
from engine.train.distributed import World
from engine.train.evaluation import emit_sample, evaluate
from engine.train.reporting import LogWindow, Progress
from engine.train.stage_setup import StageTraining, set_up_stage
from engine.train.step import StepOutput, lr_at, train_step

# How a stage ends when it returns (a failure raises); the stage turns it into the run's state.
StageOutcome = Literal["finished", "stopped"]


@dataclass
class TrainResult:
    stage: str
    state: StageOutcome
    step: int
    total_steps: int
    final_loss: float | None
    eval_loss: float | None
    checkpoint: Path | None
    seconds: float
    tokens_seen: int
    extra: dict[str, Any] = field(default_factory=dict)


def train_stage(
    stage: StageName,
    preset: Preset,
    run_dir: Path,
    tokenizer_dir: Path,
    log: EventLog,
    *,
    init_from: Checkpoint | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    world: World | None = None,
) -> TrainResult:
    """Train one stage to the end (or until should_stop()), checkpointing along the way. Under torchrun every
    rank runs this; rank 0 alone reads checkpoints and writes events and checkpoints (other ranks get a
    silent log), and a stop is agreed by all ranks inside the step's all-reduce."""
    started = time.perf_counter()
    try:
        t = set_up_stage(stage, preset, run_dir, tokenizer_dir, log, init_from=init_from, resume=resume,
                         should_stop=should_stop, world=world or World.single())
    except WaitCancelled:  # stopped while another process built this stage's token cache
        log.emit(StageEndEvent(stage=stage, state="stopped", step=0, total_steps=0, loss=None, eval_loss=None,
                               seconds=round(time.perf_counter() - started, 3), tokens_seen=0))
        return TrainResult(stage, "stopped", 0, 0, None, None, None, time.perf_counter() - started, 0)
    outcome = run_steps(t, should_stop)
    seconds = time.perf_counter() - started
    p = t.progress
    log.emit(StageEndEvent(stage=stage, state=outcome, step=p.step, total_steps=t.plan.total_steps, loss=p.loss,
                           eval_loss=p.eval_loss, seconds=round(seconds, 3), tokens_seen=p.tokens_seen))
    return TrainResult(stage, outcome, p.step, t.plan.total_steps, p.loss, p.eval_loss, t.checkpointer.last_path, seconds,
                       p.tokens_seen, extra=t.data_info)


def run_steps(t: StageTraining, should_stop: Callable[[], bool]) -> StageOutcome:
    """Optimizer steps until the stage's last (finished) or a stop request (stopped, after a checkpoint)."""
    cfg, p, world = t.cfg, t.progress, t.world
    window = LogWindow(t.precision.device)
    while p.step < t.plan.total_steps:
        step_started = time.perf_counter()
        last_step = p.step + 1 == t.plan.total_steps
        log_step = (p.step + 1) % cfg.log_interval == 0 or last_step
        lr = lr_at(p.step, t.plan.total_steps, cfg)
        out = train_step(t.step, t.batches, lr, want_grad_norm=log_step, skip_nonfinite=cfg.skip_nonfinite_steps > 0,
                         stop_vote=world.distributed and should_stop())
        t.step.forward.step_done(time.perf_counter() - step_started)
        p.step += 1
        p.tokens_seen += t.plan.tokens_per_step
        p.samples += t.plan.step_samples
        if out.skipped:
            skip_nonfinite_step(t.stage, cfg, p, out, t.warn)
        window.add(None if out.skipped else out.loss)
        if log_step:
            t.report(p, window, lr, out.grad_norm, t.precision.device)
        if last_step or (cfg.eval_interval and p.step % cfg.eval_interval == 0):
            evaluate_and_sample(t)
            window.restart_clock()
        # One process reads the stop flag after each step; several agree on it inside the next step's all-reduce.
        stopping = out.stop if world.distributed else should_stop()
        if t.checkpointer.maybe_save(p.step, t.checkpoint_state, last_step=last_step, stopping=stopping):
            window.restart_clock()
        if stopping and not last_step:
            return "stopped"
    return "finished"


def evaluate_and_sample(t: StageTraining) -> None:
    """The held-out loss and a greedy sample. Every rank evaluates (a sharded model's forward is collective);
    rank 0 reports."""
    p = t.progress
    p.eval_loss = evaluate(t.world.inner(t.step.wrapped), t.blocks, t.eval_idx, t.cfg.batch_size, t.cfg.eval_max_batches,
                           t.precision)
    if p.eval_loss is not None:
        t.log.emit(EvalEvent(stage=t.stage, step=p.step, eval_loss=p.eval_loss))
    sampler_model = sample_model(t.step.wrapped, t.model, t.world, t.precision.device)
    if sampler_model is not None:
        emit_sample(sampler_model, t.blocks, t.eval_idx, t.tokenizer, t.stage, p.step, t.log)


def sample_model(wrapped: torch.nn.Module, model: CausalLM, world: World, device: torch.device) -> CausalLM | None:
    """The model rank 0 samples from (None on other ranks): the model itself, or under FSDP a whole copy
    gathered from the shards (every rank takes part in gathering; generation then runs on rank 0 alone)."""
    if not world.distributed or world.strategy == "ddp":
        return model if world.is_main else None
    state = gather_model_state(wrapped)
    if not world.is_main:
        return None
    copy = CausalLM(model.config).to(device)
    copy.load_state_dict(state, strict=False)
    return copy


def skip_nonfinite_step(stage: str, cfg: TrainStage, progress: Progress, out: StepOutput,
                        warn: Callable[[str], None]) -> None:
    """Count a step whose update was dropped for NaN/inf; past `skip_nonfinite_steps` of them, stop the stage."""
    progress.skipped_nonfinite += 1
    what = f"loss {out.loss.item():.4g}, gradient norm {float(out.grad_norm) if out.grad_norm is not None else 'n/a'}"
    if progress.skipped_nonfinite > cfg.skip_nonfinite_steps:
        raise NonFiniteLoss(
            f"{stage}: step {progress.step} was not finite ({what}), more than {stage}.skip_nonfinite_steps = "
            f"{cfg.skip_nonfinite_steps} such steps. The last good checkpoint is kept. Lower {stage}.learning_rate, "
            f"raise warmup_iters, keep grad_clip on, or check the data.")
    warn(f"{stage}: step {progress.step} was not finite ({what}): update skipped "
         f"({progress.skipped_nonfinite} of {cfg.skip_nonfinite_steps} allowed)")
