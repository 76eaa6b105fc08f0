"""When a stage saves, and resuming from what it saved: the training loop only reports where it is.

A stage saves every `save_interval` steps, at its last step and when a stop was requested, and
never the same step twice (a stop requested right on a periodic save writes one checkpoint). The
files themselves — atomic publish, `latest`, pruning — are engine/checkpoints/checkpoint.py's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.checkpoints.checkpoint import Checkpoint, load_model_weights, restore_trainer_state, save_checkpoint
from engine.events import CheckpointEvent, EventLog


class Checkpointer:
    def __init__(self, stage: str, stage_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 tokenizer_dir: Path, save_interval: int, keep: int, log: EventLog) -> None:
        self.stage, self.stage_dir = stage, stage_dir
        self.model, self.optimizer = model, optimizer
        self.tokenizer_dir, self.save_interval, self.keep, self.log = tokenizer_dir, save_interval, keep, log
        self.last_path: Path | None = None
        self.last_step: int | None = None

    def restore(self, found: Checkpoint) -> None:
        """Load a checkpoint of this stage (the newest complete one, on resume) into the model and optimizer."""
        load_model_weights(self.model, found.path)
        restore_trainer_state(found, self.optimizer)
        self.last_path, self.last_step = found.path, found.step

    def due(self, step: int, *, last_step: bool, stopping: bool) -> bool:
        if step == self.last_step:
            return False
        return last_step or stopping or step % self.save_interval == 0

    def maybe_save(self, step: int, state: Callable[[], dict[str, Any]], *, last_step: bool, stopping: bool) -> Path | None:
        """Save if this step is due (see the module docstring); the path written, else None."""
        if not self.due(step, last_step=last_step, stopping=stopping):
            return None
        started = time.perf_counter()
        path = save_checkpoint(self.stage_dir, model=self.model, optimizer=self.optimizer, state=state(),
                               tokenizer_dir=self.tokenizer_dir, keep=self.keep)
        self.last_path, self.last_step = path, step
        self.log.emit(CheckpointEvent(stage=self.stage, step=step, path=str(path),
                                      seconds=round(time.perf_counter() - started, 3)))
        return path
