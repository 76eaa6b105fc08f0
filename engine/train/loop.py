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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from engine.checkpoints.checkpoint import Checkpoint, latest_intact_checkpoint, load_model_weights
from engine.config import Preset, StageName, TrainStage
from engine.data.blocks import EpochSampler, split_indices
from engine.data.tokenizer import load_tokenizer
from engine.errors import DataError, TrainingError
from engine.events import EvalEvent, EventLog, NoteEvent, StageEndEvent, StageStartEvent, StepEvent, WarningEvent
from engine.hardware.device import resolve_precision
from engine.hardware.peak import MfuMeter, Peak, peak_flops
from engine.hardware.readings import memory_snapshot
from engine.hardware.tuning import TuningRecord
from engine.model.transformer import CausalLM, count_parameters, flops_per_token
from engine.train.checkpointer import Checkpointer
from engine.train.compile_policy import EAGER_CPU_MFU, Mode, decide
from engine.train.evaluation import emit_sample, evaluate
from engine.train.stage_data import batch_stream, make_blocks, sampler_state
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
    consumed: int = 0  # micro-batches drawn from the sampler since the stage began (its resume position)
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

    def close(self) -> tuple[float | None, int, float]:
        """(mean loss, steps, seconds) of the window, and start the next one."""
        mean = self.loss.item() / self.loss_steps if self.loss_steps else None
        steps, seconds = self.steps, time.perf_counter() - self.started
        self.loss.zero_()
        self.steps = self.loss_steps = 0
        self.restart_clock()
        return mean, steps, seconds


def total_steps_of(stage: StageName, cfg: TrainStage, n_train: int) -> tuple[int, int]:
    """(optimizer steps of the stage, micro-batches per epoch); a DataError when the data cannot fill a batch."""
    batches_per_epoch = n_train // cfg.batch_size
    if batches_per_epoch < 1:
        raise DataError(
            f"{stage}: {n_train} training sequences of {cfg.max_seq_len} tokens cannot fill one batch of "
            f"{cfg.batch_size}; lower {stage}.batch_size or {stage}.max_seq_len, or add data to {cfg.data_path}"
        )
    return cfg.max_steps or max(1, cfg.epochs * batches_per_epoch // cfg.accumulation_steps), batches_per_epoch


def compile_decider(preset: Preset, device_type: str, record: TuningRecord, remaining: int,
                    eager_estimate: float | None, reasons: list[str]) -> Callable[[str, str], Mode]:
    """The compile decision for build_step, made once the step's shape (its tuning key) is known."""

    def choose(key: str, attention: str) -> Mode:
        mode, reason = decide(preset.runtime.compile, device_type, record.get(key), remaining, eager_estimate)
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
) -> StageResult:
    """Train one stage to the end (or until should_stop()), checkpointing along the way."""
    cfg = preset.stage(stage)
    started = time.perf_counter()
    precision = resolve_precision(preset.runtime.device, preset.runtime.dtype)
    torch.manual_seed(preset.seed)
    blocks, data_info = make_blocks(stage, preset, tokenizer_dir, log)
    train_idx, eval_idx = split_indices(len(blocks), cfg.eval_fraction, preset.seed)
    total_steps, batches_per_epoch = total_steps_of(stage, cfg, len(train_idx))
    tokens_per_step = cfg.batch_size * cfg.max_seq_len * cfg.accumulation_steps
    stage_dir = run_dir / "checkpoints" / stage

    def warn(message: str) -> None:
        log.emit(WarningEvent(stage=stage, message=message))

    resumed_from = latest_intact_checkpoint(stage_dir, warn) if resume else None
    progress = Progress()
    if resumed_from is not None:
        state = resumed_from.state
        progress = Progress(resumed_from.step, state["tokens_seen"], state["batches_consumed"],
                            state.get("metrics", {}).get("loss"), state.get("metrics", {}).get("eval_loss"),
                            state.get("skipped_nonfinite", 0))

    record = TuningRecord(Path(preset.runtime.cache_dir), precision.device)
    flops_tok = flops_per_token(preset.model, cfg.max_seq_len)
    peak = peak_flops(precision, preset.runtime.peak_tflops, Path(preset.runtime.cache_dir))
    remaining = total_steps - progress.step
    eager_estimate = remaining * tokens_per_step * flops_tok / (EAGER_CPU_MFU * peak.flops) if peak.flops else None
    compile_reasons: list[str] = []
    model = CausalLM(preset.model)
    if init_from is not None:
        load_model_weights(model, init_from.path)
    setup = build_step(
        preset, cfg, precision, record, model=model,
        mode=compile_decider(preset, precision.device.type, record, remaining, eager_estimate, compile_reasons),
        note=lambda message, figures: log.emit(NoteEvent(stage=stage, message=message, figures=figures)),
        warn=warn)
    checkpointer = Checkpointer(stage, stage_dir, model=model, optimizer=setup.optimizer, tokenizer_dir=tokenizer_dir,
                                save_interval=cfg.save_interval, keep=cfg.keep_checkpoints, log=log)
    if resumed_from is not None:
        checkpointer.restore(resumed_from)

    sampler = EpochSampler(train_idx, cfg.batch_size, seed=preset.seed)
    sampler.load_state_dict(sampler_state(progress.consumed, batches_per_epoch))
    batches = batch_stream(blocks, sampler, num_workers=preset.runtime.num_workers,
                           pin=precision.device.type == "cuda", seed=preset.seed)
    total_params, active_params = count_parameters(preset.model)
    log.emit(StageStartEvent(
        stage=stage, total_steps=total_steps, start_step=progress.step, resumed=resumed_from is not None,
        device=str(precision.device), dtype=precision.dtype, dtype_reason=precision.why,
        params=total_params, active_params=active_params, tokens_per_step=tokens_per_step,
        compile=setup.forward.is_compiled or setup.forward.trial,
        compile_mode="trial" if setup.forward.trial else ("compiled" if setup.forward.is_compiled else "eager"),
        compile_reason=compile_reasons[0], attention=setup.attention, attention_reason=setup.attention_reason,
        peak_source=peak.source, init_from=str(init_from.path) if init_from else None, **data_info,
    ))

    def checkpoint_state() -> dict[str, Any]:
        return {
            "stage": stage, "step": progress.step, "total_steps": total_steps, "tokens_seen": progress.tokens_seen,
            "batches_consumed": progress.consumed, "sampler": sampler_state(progress.consumed, batches_per_epoch),
            "model": preset.model.model_dump(mode="json"), "preset": preset.model_dump(mode="json"),
            "dtype": precision.dtype, "metrics": {"loss": progress.loss, "eval_loss": progress.eval_loss},
            "skipped_nonfinite": progress.skipped_nonfinite,
        }

    tokenizer = load_tokenizer(tokenizer_dir)
    report = StepReporter(stage, cfg, total_steps, tokens_per_step, flops_tok, peak, batches_per_epoch, log)
    window = LogWindow(precision.device)
    outcome: StageOutcome = "finished"
    while progress.step < total_steps:
        step_started = time.perf_counter()
        last_step = progress.step + 1 == total_steps
        log_step = (progress.step + 1) % cfg.log_interval == 0 or last_step
        lr = lr_at(progress.step, total_steps, cfg)
        out = train_step(setup, batches, lr, want_grad_norm=log_step, skip_nonfinite=cfg.skip_nonfinite_steps > 0)
        setup.forward.step_done(time.perf_counter() - step_started)
        progress.step += 1
        progress.tokens_seen += tokens_per_step
        progress.consumed += cfg.accumulation_steps
        if out.skipped:
            skip_nonfinite_step(stage, cfg, progress, out, warn)
        window.add(None if out.skipped else out.loss)
        if log_step:
            report(progress, window, lr, out.grad_norm, precision.device)
        if last_step or (cfg.eval_interval and progress.step % cfg.eval_interval == 0):
            progress.eval_loss = evaluate(model, blocks, eval_idx, cfg.batch_size, cfg.eval_max_batches, precision)
            if progress.eval_loss is not None:
                log.emit(EvalEvent(stage=stage, step=progress.step, eval_loss=progress.eval_loss))
            emit_sample(model, blocks, eval_idx, tokenizer, stage, progress.step, log)
            window.restart_clock()
        stopping = should_stop()
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
                 peak: Peak, batches_per_epoch: int, log: EventLog) -> None:
        self.stage, self.cfg, self.total_steps, self.log = stage, cfg, total_steps, log
        self.tokens_per_step, self.flops_per_token, self.batches_per_epoch = tokens_per_step, flops_per_token, batches_per_epoch
        self.mfu = MfuMeter(peak, warn=lambda message: log.emit(WarningEvent(stage=stage, message=message)))

    def __call__(self, progress: Progress, window: LogWindow, lr: float, grad_norm: torch.Tensor | None,
                 device: torch.device) -> None:
        loss, steps, seconds = window.close()
        progress.loss = loss if loss is not None else progress.loss  # None: every step of the window was skipped
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(
                f"{self.stage}: the loss became {loss} at step {progress.step}. The last good checkpoint is kept. "
                f"Lower {self.stage}.learning_rate, raise warmup_iters, keep grad_clip on, or check the data."
            )
        tokens_per_s = steps * self.tokens_per_step / seconds
        self.log.emit(StepEvent(
            stage=self.stage, step=progress.step, total_steps=self.total_steps, loss=loss, lr=lr,
            grad_norm=float(grad_norm) if grad_norm is not None else None, tokens_per_s=tokens_per_s,
            samples_per_s=steps * self.cfg.batch_size * self.cfg.accumulation_steps / seconds,
            mfu=self.mfu(self.flops_per_token * tokens_per_s), mfu_note=self.mfu.note,
            eta_s=(self.total_steps - progress.step) * seconds / steps, tokens_seen=progress.tokens_seen,
            skipped_nonfinite=progress.skipped_nonfinite,
            epoch=progress.consumed / self.batches_per_epoch, **memory_snapshot(device),
        ))
