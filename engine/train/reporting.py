"""What a training stage reports while it runs: the log window of losses and time between step events, and
the reporter that closes a window into a `step` event (loss, throughput, MFU, memory, ETA).

The loss stays on the device and is read once per window: the loop's only host synchronisation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from engine.config import TrainStage
from engine.errors import NonFiniteLoss
from engine.events import EventLog, RankMemory, StepEvent, WarningEvent
from engine.hardware.peak import MfuMeter, Peak
from engine.hardware.readings import memory_snapshot
from engine.train.distributed import World


@dataclass(frozen=True)
class StagePlan:
    """How long a stage is and what one optimizer step holds (the whole world's figures)."""

    total_steps: int
    step_samples: int  # sequences per optimizer step, all ranks and micro-batches
    tokens_per_step: int
    epoch_samples: int  # sequences per epoch, cut to whole steps


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


class StepReporter:
    """Closes a log window into a `step` event: loss, throughput, MFU, memory, ETA. A NaN/inf loss stops
    the stage here (the last good checkpoint is kept)."""

    def __init__(self, stage: str, cfg: TrainStage, plan: StagePlan, flops_per_token: float, peak: Peak, log: EventLog,
                 world: World) -> None:
        self.stage, self.cfg, self.plan, self.log, self.world = stage, cfg, plan, log, world
        self.flops_per_token = flops_per_token
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
        tokens_per_s = steps * self.plan.tokens_per_step / seconds  # the whole world's: tokens_per_step is global
        self.log.emit(StepEvent(
            stage=self.stage, step=progress.step, total_steps=self.plan.total_steps, loss=loss, lr=lr,
            grad_norm=float(grad_norm) if grad_norm is not None else None, tokens_per_s=tokens_per_s,
            samples_per_s=steps * self.plan.tokens_per_step / self.cfg.max_seq_len / seconds,
            # per device: each process's share of the throughput against one device's peak
            mfu=self.mfu(self.flops_per_token * tokens_per_s / self.world.size), mfu_note=self.mfu.note,
            eta_s=(self.plan.total_steps - progress.step) * seconds / steps, tokens_seen=progress.tokens_seen,
            skipped_nonfinite=progress.skipped_nonfinite,
            epoch=progress.samples / self.plan.epoch_samples, **memory[0],
            world_size=self.world.size if self.world.distributed else None,
            ranks=[RankMemory(rank=rank, **figures) for rank, figures in enumerate(memory)] if self.world.distributed else None,
        ))
