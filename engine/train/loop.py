"""One training loop for pretraining and SFT.

The stages differ only in their data (packed text blocks vs. packed conversations with a loss mask)
and their starting weights; everything else — schedule, accumulation, precision, evaluation,
checkpoints, stop requests and resume — is shared. The loop only calls things: `train_step`
(engine/train/step.py, the same step calibration times), the evaluation and sample
(engine/train/evaluation.py), the checkpointer that decides when to save (engine/train/checkpointer.py). The
last step goes through the same eval and save code as the periodic ones (`last_step`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from engine.checkpoints.checkpoint import (
    Checkpoint,
    gather_model_state,
    latest_intact_checkpoint,
    load_model_weights,
    load_training_state,
    read_model_tensors,
)
from engine.config import Preset, StageName, TrainStage
from engine.data.blocks import EpochSampler, split_indices
from engine.data.tokenizer import load_tokenizer
from engine.errors import DataError, PresetError, TrainingError
from engine.events import (
    EvalEvent,
    EventLog,
    NoteEvent,
    RankMemory,
    StageEndEvent,
    StageStartEvent,
    StepEvent,
    WarningEvent,
)
from engine.hardware.device import resolve_precision
from engine.hardware.peak import MfuMeter, Peak, peak_flops
from engine.hardware.readings import memory_snapshot
from engine.hardware.tuning import TuningRecord
from engine.locks import WaitCancelled
from engine.model.transformer import CausalLM, count_parameters, flops_per_token
from engine.train.checkpointer import Checkpointer
from engine.train.compile_policy import EAGER_CPU_MFU, Mode, decide
from engine.train.distributed import World
from engine.train.evaluation import emit_sample, evaluate
from engine.train.stage_data import batch_stream, make_blocks
from engine.train.step import StepOutput, build_step, lr_at, train_step

# How a stage ends when it returns (a failure raises); the pipeline turns it into the run's RunState.
StageOutcome = Literal["finished", "stopped"]


class NonFiniteLoss(TrainingError):
    """The loss became NaN/inf; the message carries the step and advice."""


@dataclass
class StageResult:
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


@dataclass
class Progress:
    """Where a stage stands: what the step events report and a checkpoint stores."""

    step: int = 0
    tokens_seen: int = 0
    samples: int = 0  # sequences the whole world drew since the stage began (its resume position)
    loss: float | None = None  # mean training loss of the last log window
    eval_loss: float | None = None
    skipped_nonfinite: int = 0  # steps not applied because their loss or gradients were NaN/inf


class LogWindow:
    """The loss and time since the last step event. The loss stays on the device and is read once per
    window — the loop's only host synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.steps = 0
        self.loss_steps = 0  # steps whose loss counts (a skipped non-finite step takes time but has no loss)
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor | None) -> None:
        """One step done; `loss` None for a step whose update was skipped."""
        if loss is not None:
            self.loss += loss
            self.loss_steps += 1
        self.steps += 1

    def restart_clock(self) -> None:
        """Time spent evaluating or saving is not training time."""
        self.started = time.perf_counter()

    def close(self, world: World) -> tuple[float | None, int, float]:
        """(mean loss, steps, seconds) of the window, and start the next one. Each rank holds its share of
        every step's loss (engine/train/step.py), so the world's sum is the loss."""
        loss = world.sum([self.loss.item()])[0]
        mean = loss / self.loss_steps if self.loss_steps else None
        steps, seconds = self.steps, time.perf_counter() - self.started
        self.loss.zero_()
        self.steps = self.loss_steps = 0
        self.restart_clock()
        return mean, steps, seconds


def total_steps_of(stage: StageName, cfg: TrainStage, n_train: int, step_samples: int) -> tuple[int, int]:
    """(optimizer steps of the stage, sequences per epoch); a DataError when the data cannot fill one step of
    `step_samples` sequences (batch_size x processes x accumulation)."""
    steps_per_epoch = n_train // step_samples
    if steps_per_epoch < 1:
        raise DataError(
            f"{stage}: {n_train} training sequences of {cfg.max_seq_len} tokens cannot fill one step of "
            f"{step_samples} (batch_size x processes x accumulation_steps); lower {stage}.batch_size or "
            f"{stage}.max_seq_len, train on fewer processes, or add data to {cfg.data_path}"
        )
    return cfg.max_steps or max(1, cfg.epochs * steps_per_epoch), steps_per_epoch * step_samples


def accumulation_for(stage: StageName, cfg: TrainStage, world: World, saved: dict[str, Any] | None) -> int:
    """Micro-batches per step. A resumed stage keeps the global batch it was saved with (batch_size x processes
    x accumulation), so resuming on another number of processes changes the accumulation, not the objective."""
    if saved is None or not saved.get("global_batch"):
        return cfg.accumulation_steps
    global_batch, per_micro = int(saved["global_batch"]), cfg.batch_size * world.size
    if global_batch % per_micro:
        raise PresetError(
            f"{stage}: this run was saved with a global batch of {global_batch} sequences per step, which "
            f"{world.size} process(es) x batch_size {cfg.batch_size} cannot make up; resume on a number of "
            f"processes that divides {global_batch // cfg.batch_size}"
        )
    return global_batch // per_micro


def step_samples_of(saved: dict[str, Any] | None, cfg: TrainStage) -> int:
    """Sequences drawn so far from a checkpoint's state (older checkpoints counted micro-batches of one process)."""
    if saved is None:
        return 0
    return int(saved["samples_consumed"]) if "samples_consumed" in saved else int(saved["batches_consumed"]) * cfg.batch_size


def compile_decider(preset: Preset, device_type: str, record: TuningRecord, remaining: int,
                    eager_estimate: float | None, reasons: list[str], world: World) -> Callable[[str, str], Mode]:
    """The compile decision for build_step, made once the step's shape (its tuning key) is known."""

    def choose(key: str, attention: str) -> Mode:
        mode, reason = decide(preset.runtime.compile, device_type, record.get(key), remaining, eager_estimate)
        if mode == "trial" and world.distributed:
            # Timing trials per rank could end in different choices; several CPU processes stay eager.
            mode, reason = "eager", f"{world.size} processes: no compile trial (set runtime.compile = \"on\" to compile)"
        reasons.append(reason)
        return mode

    return choose


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
) -> StageResult:
    """Train one stage to the end (or until should_stop()), checkpointing along the way. Under torchrun every
    rank runs this; rank 0 alone reads checkpoints and writes events and checkpoints (other ranks get a
    silent log), and a stop is agreed by all ranks inside the step's all-reduce."""
    world = world or World.single()
    cfg = preset.stage(stage)
    started = time.perf_counter()
    precision = resolve_precision(preset.runtime.device, preset.runtime.dtype)
    precision = replace(precision, device=world.device_for(precision.device))
    torch.manual_seed(preset.seed)
    try:
        blocks, data_info = make_blocks(stage, preset, tokenizer_dir, log, world, should_stop)
    except WaitCancelled:  # stopped while another process built this stage's token cache
        log.emit(StageEndEvent(stage=stage, state="stopped", step=0, total_steps=0, loss=None, eval_loss=None,
                               seconds=round(time.perf_counter() - started, 3), tokens_seen=0))
        return StageResult(stage, "stopped", 0, 0, None, None, None, time.perf_counter() - started, 0)
    train_idx, eval_idx = split_indices(len(blocks), cfg.eval_fraction, preset.seed)
    stage_dir = run_dir / "checkpoints" / stage

    def warn(message: str) -> None:
        log.emit(WarningEvent(stage=stage, message=message))

    resumed_from = latest_intact_checkpoint(stage_dir, warn) if resume and world.is_main else None
    saved: dict[str, Any] | None = world.broadcast(resumed_from.state if resumed_from else None)
    accumulation = accumulation_for(stage, cfg, world, saved)
    if accumulation != cfg.accumulation_steps:
        warn(f"{stage}: resumed on {world.size} process(es): accumulation_steps {cfg.accumulation_steps} -> "
             f"{accumulation}, keeping the saved global batch of {saved and saved['global_batch']} sequences per step")
        cfg = cfg.model_copy(update={"accumulation_steps": accumulation})
    step_samples = cfg.batch_size * world.size * cfg.accumulation_steps
    total_steps, epoch_samples = total_steps_of(stage, cfg, len(train_idx), step_samples)
    tokens_per_step = step_samples * cfg.max_seq_len
    progress = Progress()
    if saved is not None:
        metrics = saved.get("metrics", {})
        progress = Progress(saved["step"], saved["tokens_seen"], step_samples_of(saved, cfg), metrics.get("loss"),
                            metrics.get("eval_loss"), saved.get("skipped_nonfinite", 0))

    record = TuningRecord(Path(preset.runtime.cache_dir), precision.device)
    flops_tok = flops_per_token(preset.model, cfg.max_seq_len)
    peak = peak_flops(precision, preset.runtime.peak_tflops, Path(preset.runtime.cache_dir))
    remaining = total_steps - progress.step
    eager_estimate = remaining * tokens_per_step * flops_tok / (EAGER_CPU_MFU * peak.flops * world.size) if peak.flops else None
    compile_reasons: list[str] = []
    model = CausalLM(preset.model)
    if init_from is not None and not world.distributed:
        load_model_weights(model, init_from.path)
    setup = build_step(
        preset, cfg, precision, record, model=model, world=world,
        mode=compile_decider(preset, precision.device.type, record, remaining, eager_estimate, compile_reasons, world),
        note=lambda message, figures: log.emit(NoteEvent(stage=stage, message=message, figures=figures)),
        warn=warn)
    if init_from is not None and world.distributed:  # rank 0 reads the starting weights, the others receive them
        load_training_state(setup.wrapped, None, read_model_tensors(init_from.path, model) if world.is_main else None,
                            None, from_rank0=True)
    checkpointer = Checkpointer(stage, stage_dir, model=model, wrapped=setup.wrapped, optimizer=setup.optimizer,
                                world=world, tokenizer_dir=tokenizer_dir, save_interval=cfg.save_interval,
                                keep=cfg.keep_checkpoints, log=log)
    if saved is not None:
        checkpointer.restore(resumed_from, progress.step)

    sampler = EpochSampler(train_idx, cfg.batch_size, seed=preset.seed, rank=world.rank, world=world.size,
                           step_samples=step_samples)
    sampler.load_state_dict(position_of(progress.samples, epoch_samples))
    batches = batch_stream(blocks, sampler, num_workers=preset.runtime.num_workers,
                           pin=precision.device.type == "cuda", seed=preset.seed)
    total_params, active_params = count_parameters(preset.model)
    log.emit(StageStartEvent(
        stage=stage, total_steps=total_steps, start_step=progress.step, resumed=saved is not None,
        device=str(precision.device), dtype=precision.dtype, dtype_reason=precision.why,
        params=total_params, active_params=active_params, tokens_per_step=tokens_per_step,
        world_size=world.size, strategy=world.strategy if world.distributed else None,
        compile=setup.forward.is_compiled or setup.forward.trial,
        compile_mode="trial" if setup.forward.trial else ("compiled" if setup.forward.is_compiled else "eager"),
        compile_reason=compile_reasons[0], attention=setup.attention, attention_reason=setup.attention_reason,
        peak_source=peak.source, init_from=str(init_from.path) if init_from else None, **data_info,
    ))

    def checkpoint_state() -> dict[str, Any]:
        return {
            "stage": stage, "step": progress.step, "total_steps": total_steps, "tokens_seen": progress.tokens_seen,
            "samples_consumed": progress.samples, "sampler": position_of(progress.samples, epoch_samples),
            "global_batch": step_samples, "world_size": world.size,
            "model": preset.model.model_dump(mode="json"), "preset": preset.model_dump(mode="json"),
            "dtype": precision.dtype, "metrics": {"loss": progress.loss, "eval_loss": progress.eval_loss},
            "skipped_nonfinite": progress.skipped_nonfinite,
        }

    tokenizer = load_tokenizer(tokenizer_dir)
    report = StepReporter(stage, cfg, total_steps, tokens_per_step, flops_tok, peak, epoch_samples, log, world)
    window = LogWindow(precision.device)
    outcome: StageOutcome = "finished"
    while progress.step < total_steps:
        step_started = time.perf_counter()
        last_step = progress.step + 1 == total_steps
        log_step = (progress.step + 1) % cfg.log_interval == 0 or last_step
        lr = lr_at(progress.step, total_steps, cfg)
        out = train_step(setup, batches, lr, want_grad_norm=log_step, skip_nonfinite=cfg.skip_nonfinite_steps > 0,
                         stop_vote=world.distributed and should_stop())
        setup.forward.step_done(time.perf_counter() - step_started)
        progress.step += 1
        progress.tokens_seen += tokens_per_step
        progress.samples += step_samples
        if out.skipped:
            skip_nonfinite_step(stage, cfg, progress, out, warn)
        window.add(None if out.skipped else out.loss)
        if log_step:
            report(progress, window, lr, out.grad_norm, precision.device)
        if last_step or (cfg.eval_interval and progress.step % cfg.eval_interval == 0):
            # Every rank evaluates (a sharded model's forward is collective); rank 0 reports.
            progress.eval_loss = evaluate(world.inner(setup.wrapped), blocks, eval_idx, cfg.batch_size,
                                          cfg.eval_max_batches, precision)
            if progress.eval_loss is not None:
                log.emit(EvalEvent(stage=stage, step=progress.step, eval_loss=progress.eval_loss))
            sampler_model = sample_model(setup.wrapped, model, world, precision.device)
            if sampler_model is not None:
                emit_sample(sampler_model, blocks, eval_idx, tokenizer, stage, progress.step, log)
            window.restart_clock()
        # One process reads the stop flag after each step; several agree on it inside the next step's all-reduce.
        stopping = out.stop if world.distributed else should_stop()
        if checkpointer.maybe_save(progress.step, checkpoint_state, last_step=last_step, stopping=stopping):
            window.restart_clock()
        if stopping and not last_step:
            outcome = "stopped"
            break

    seconds = time.perf_counter() - started
    log.emit(StageEndEvent(stage=stage, state=outcome, step=progress.step, total_steps=total_steps, loss=progress.loss,
             eval_loss=progress.eval_loss, seconds=round(seconds, 3), tokens_seen=progress.tokens_seen))
    return StageResult(stage, outcome, progress.step, total_steps, progress.loss, progress.eval_loss,
                       checkpointer.last_path, seconds, progress.tokens_seen, extra=data_info)


def position_of(samples: int, epoch_samples: int) -> dict[str, int]:
    """Where the sampler stands after the world drew `samples` sequences (what a checkpoint stores)."""
    return {"epoch": samples // epoch_samples, "sample": samples % epoch_samples}


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


class StepReporter:
    """Closes a log window into a `step` event: loss, throughput, MFU, memory, ETA. A NaN/inf loss stops
    the stage here (the last good checkpoint is kept)."""

    def __init__(self, stage: str, cfg: TrainStage, total_steps: int, tokens_per_step: int, flops_per_token: float,
                 peak: Peak, epoch_samples: int, log: EventLog, world: World) -> None:
        self.stage, self.cfg, self.total_steps, self.log, self.world = stage, cfg, total_steps, log, world
        self.tokens_per_step, self.flops_per_token, self.epoch_samples = tokens_per_step, flops_per_token, epoch_samples
        self.mfu = MfuMeter(peak, warn=lambda message: log.emit(WarningEvent(stage=stage, message=message)))

    def __call__(self, progress: Progress, window: LogWindow, lr: float, grad_norm: torch.Tensor | None,
                 device: torch.device) -> None:
        loss, steps, seconds = window.close(self.world)
        memory = self.world.gather(memory_snapshot(device))  # every rank's, for one gauge per GPU
        progress.loss = loss if loss is not None else progress.loss  # None: every step of the window was skipped
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(
                f"{self.stage}: the loss became {loss} at step {progress.step}. The last good checkpoint is kept. "
                f"Lower {self.stage}.learning_rate, raise warmup_iters, keep grad_clip on, or check the data."
            )
        tokens_per_s = steps * self.tokens_per_step / seconds  # the whole world's: tokens_per_step is global
        self.log.emit(StepEvent(
            stage=self.stage, step=progress.step, total_steps=self.total_steps, loss=loss, lr=lr,
            grad_norm=float(grad_norm) if grad_norm is not None else None, tokens_per_s=tokens_per_s,
            samples_per_s=steps * self.tokens_per_step / self.cfg.max_seq_len / seconds,
            # per device: each process's share of the throughput against one device's peak
            mfu=self.mfu(self.flops_per_token * tokens_per_s / self.world.size), mfu_note=self.mfu.note,
            eta_s=(self.total_steps - progress.step) * seconds / steps, tokens_seen=progress.tokens_seen,
            skipped_nonfinite=progress.skipped_nonfinite,
            epoch=progress.samples / self.epoch_samples, **memory[0],
            world_size=self.world.size if self.world.distributed else None,
            ranks=[RankMemory(rank=rank, **figures) for rank, figures in enumerate(memory)] if self.world.distributed else None,
        ))
