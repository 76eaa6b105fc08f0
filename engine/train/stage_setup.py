"""Setting up a training stage: everything its loop (engine/train/loop.py) calls, built once.

In order: the data (token cache, packed blocks, the held-out split), where a resume starts (the newest intact
checkpoint, the global batch it was saved with), the model and its step (precision, attention kernel, compile
decision, the world's wrapping), the checkpointer, the sampler at its saved position, the reporter, and the
stage_start event that says what was chosen and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine.checkpoints.checkpoint import Checkpoint, latest_intact_checkpoint, load_model_weights, load_training_state, read_model_tensors
from engine.config import Preset, StageName, TrainStage
from engine.data.blocks import EpochSampler, split_indices
from engine.data.tokenizer import load_tokenizer
from engine.errors import DataError, PresetError
from engine.events import EventLog, NoteEvent, StageStartEvent, WarningEvent
from engine.hardware.device import Precision, resolve_precision
from engine.hardware.peak import peak_flops
from engine.hardware.tuning import TuningRecord
from engine.model.transformer import CausalLM, count_parameters, flops_per_token
from engine.train.checkpointer import Checkpointer
from engine.train.compile_policy import EAGER_CPU_MFU, Mode, decide
from engine.train.distributed import World
from engine.train.reporting import Progress, StagePlan, StepReporter
from engine.train.stage_data import batch_stream, make_blocks
from engine.train.step import StepSetup, build_step


@dataclass
class StageTraining:
    """A training stage ready to run: what the loop reads and updates."""

    stage: StageName
    cfg: TrainStage
    world: World
    precision: Precision
    log: EventLog
    model: CausalLM
    step: StepSetup
    blocks: Any  # the packed sequences (engine.data.blocks)
    eval_idx: Any  # held-out sequence indices
    batches: Iterator[Any]
    checkpointer: Checkpointer
    report: StepReporter
    tokenizer: Any
    progress: Progress
    plan: StagePlan
    data_info: dict[str, Any]  # what the data build reported (records, tokens, sequences ...)
    preset: Preset

    def warn(self, message: str) -> None:
        self.log.emit(WarningEvent(stage=self.stage, message=message))

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint's state.json records beside the weights: enough to resume exactly."""
        p, plan = self.progress, self.plan
        return {
            "stage": self.stage, "step": p.step, "total_steps": plan.total_steps, "tokens_seen": p.tokens_seen,
            "samples_consumed": p.samples, "sampler": position_of(p.samples, plan.epoch_samples),
            "global_batch": plan.step_samples, "world_size": self.world.size,
            "model": self.preset.model.model_dump(mode="json"), "preset": self.preset.model_dump(mode="json"),
            "dtype": self.precision.dtype, "metrics": {"loss": p.loss, "eval_loss": p.eval_loss},
            "skipped_nonfinite": p.skipped_nonfinite,
        }


def set_up_stage(stage: StageName, preset: Preset, run_dir: Path, tokenizer_dir: Path, log: EventLog, *,
                 init_from: Checkpoint | None, resume: bool, should_stop: Callable[[], bool], world: World) -> StageTraining:
    """Build the stage (engine.locks.WaitCancelled when stopped while another process builds its token cache)."""
    cfg = preset.stage(stage)
    precision = resolve_precision(preset.runtime.device, preset.runtime.dtype)
    precision = replace(precision, device=world.device_for(precision.device))
    torch.manual_seed(preset.seed)
    blocks, data_info = make_blocks(stage, preset, tokenizer_dir, log, world, should_stop)
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
    progress = progress_of(saved, cfg)

    record = TuningRecord(Path(preset.runtime.cache_dir), precision.device)
    flops_tok = flops_per_token(preset.model, cfg.max_seq_len)
    peak = peak_flops(precision, preset.runtime.peak_tflops, Path(preset.runtime.cache_dir))
    tokens_per_step = step_samples * cfg.max_seq_len
    plan = StagePlan(total_steps, step_samples, tokens_per_step, epoch_samples)
    remaining = total_steps - progress.step
    eager_estimate = remaining * tokens_per_step * flops_tok / (EAGER_CPU_MFU * peak.flops * world.size) if peak.flops else None
    compile_reasons: list[str] = []
    model = CausalLM(preset.model)
    if init_from is not None and not world.distributed:
        load_model_weights(model, init_from.path)
    step = build_step(
        preset, cfg, precision, record, model=model, world=world,
        mode=compile_decider(preset, precision.device.type, record, remaining, eager_estimate, compile_reasons, world),
        note=lambda message, figures: log.emit(NoteEvent(stage=stage, message=message, figures=figures)),
        warn=warn)
    if init_from is not None and world.distributed:  # rank 0 reads the starting weights, the others receive them
        load_training_state(step.wrapped, None, read_model_tensors(init_from.path, model) if world.is_main else None,
                            None, from_rank0=True)
    checkpointer = Checkpointer(stage, stage_dir, step, cfg, tokenizer_dir, log)
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
        compile=step.forward.is_compiled or step.forward.trial,
        compile_mode="trial" if step.forward.trial else ("compiled" if step.forward.is_compiled else "eager"),
        compile_reason=compile_reasons[0], attention=step.attention, attention_reason=step.attention_reason,
        peak_source=peak.source, init_from=str(init_from.path) if init_from else None, **data_info,
    ))
    report = StepReporter(stage, cfg, plan, flops_tok, peak, log, world)
    return StageTraining(stage, cfg, world, precision, log, model, step, blocks, eval_idx, batches, checkpointer, report,
                         load_tokenizer(tokenizer_dir), progress, plan, data_info, preset)


def progress_of(saved: dict[str, Any] | None, cfg: TrainStage) -> Progress:
    """Where a stage stands from its checkpoint's state (a fresh Progress without one)."""
    if saved is None:
        return Progress()
    metrics = saved.get("metrics", {})
    return Progress(saved["step"], saved["tokens_seen"], step_samples_of(saved, cfg), metrics.get("loss"),
                    metrics.get("eval_loss"), saved.get("skipped_nonfinite", 0))


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


def position_of(samples: int, epoch_samples: int) -> dict[str, int]:
    """Where the sampler stands after the world drew `samples` sequences (what a checkpoint stores)."""
    return {"epoch": samples // epoch_samples, "sample": samples % epoch_samples}
