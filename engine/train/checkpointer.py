"""When a stage saves, and resuming from what it saved: the training loop only reports where it is.

A stage saves every `save_interval` steps, at its last step and when a stop was requested, and
never the same step twice (a stop requested right on a periodic save writes one checkpoint). The
files themselves — atomic publish, `latest`, pruning — are engine/checkpoints/checkpoint.py's job.

Under torchrun every rank takes part in a save (gathering FSDP shards is collective) and rank 0 alone
writes; on a restore rank 0 alone reads, and the state reaches the other ranks by broadcast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.checkpoints.checkpoint import (
    Checkpoint,
    gather_model_state,
    gather_optimizer_state,
    load_training_state,
    model_tensors,
    read_model_tensors,
    read_trainer_state,
    restore_rng,
    rng_tensors,
    save_checkpoint,
)
from engine.config import TrainStage
from engine.events import CheckpointEvent, EventLog
from engine.train.step import StepSetup


class Checkpointer:
    def __init__(self, stage: str, stage_dir: Path, step: StepSetup, cfg: TrainStage, tokenizer_dir: Path,
                 log: EventLog) -> None:
        """Saves and restores what `step` trains (its model, wrapped model, optimizer, world) every
        `cfg.save_interval` steps, keeping `cfg.keep_checkpoints`; each checkpoint carries the tokenizer."""
        self.stage, self.stage_dir = stage, stage_dir
        self.model, self.wrapped, self.optimizer, self.world = step.model, step.wrapped, step.optimizer, step.world
        self.tokenizer_dir, self.save_interval, self.keep, self.log = tokenizer_dir, cfg.save_interval, cfg.keep_checkpoints, log
        self.last_path: Path | None = None
        self.last_step: int | None = None

    def restore(self, found: Checkpoint | None, step: int) -> None:
        """Load a checkpoint of this stage (the newest intact one, on resume) into the model and optimizer.
        Rank 0 passes what it found; the others pass None."""
        model_state = optimizer_state = None
        rng: dict[str, torch.Tensor] = {}
        if found is not None:
            # Older checkpoints count parameters in the optimizer's order (matrices first, then vectors).
            name_of = {id(param): name for name, param in self.model.named_parameters()}
            names = [name_of[id(param)] for group in self.optimizer.param_groups for param in group["params"]]
            model_state = read_model_tensors(found.path, self.model)
            optimizer_state, rng = read_trainer_state(found, names)
        load_training_state(self.wrapped, self.optimizer, model_state, optimizer_state, from_rank0=self.world.distributed)
        restore_rng(self.world.broadcast(rng), self.world.rank)
        self.last_path = found.path if found is not None else None
        self.last_step = step

    def due(self, step: int, *, last_step: bool, stopping: bool) -> bool:
        if step == self.last_step:
            return False
        return last_step or stopping or step % self.save_interval == 0

    def maybe_save(self, step: int, state: Callable[[], dict[str, Any]], *, last_step: bool, stopping: bool) -> Path | None:
        """Save if this step is due (see the module docstring); the path written (rank 0), else None."""
        if not self.due(step, last_step=last_step, stopping=stopping):
            return None
        started = time.perf_counter()
        model_state = model_tensors(self.model, gather_model_state(self.wrapped))
        optimizer_state = gather_optimizer_state(self.wrapped, self.optimizer)
        rng: dict[str, torch.Tensor] = {}
        for part in self.world.gather(rng_tensors(self.world.rank)):
            rng.update(part)
        self.last_step = step
        if not self.world.is_main:
            return None
        path = save_checkpoint(self.stage_dir, model_state=model_state, optimizer_state=optimizer_state, rng=rng,
                               state=state(), tokenizer_dir=self.tokenizer_dir, keep=self.keep)
        self.last_path = path
        self.log.emit(CheckpointEvent(stage=self.stage, step=step, path=str(path),
                                      seconds=round(time.perf_counter() - started, 3)))
        return path
