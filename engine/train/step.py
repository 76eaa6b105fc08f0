"""One optimizer step, written once: what training runs and what `estimate --calibrate` times.

`build_step` makes everything a step needs from a preset (the model on its device with the chosen
attention kernel and activation checkpointing, TF32 on CUDA, fused AdamW, a GradScaler for fp16,
the forward eager or compiled as decided) and `train_step` runs one step: learning rate, the
accumulated micro-batches, unscaling, clipping, the update. A calibration that built its own step
would time something training never runs (no compile, no clipping, no scaler) — so there is no
other copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import Preset, TrainStage
from engine.data.blocks import IGNORE_INDEX
from engine.hardware.device import Precision
from engine.hardware.tuning import TuningRecord
from engine.model.attention import AttentionShape, choose_kernel
from engine.model.transformer import CausalLM
from engine.train.compile_policy import CompiledForward, Mode, compile_key
from engine.train.distributed import World

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (B, T) on the CPU


def lr_at(step: int, total_steps: int, cfg: TrainStage) -> float:
    """Linear warmup to learning_rate, then cosine decay to learning_rate * min_lr_ratio (pure)."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if cfg.warmup_iters and step < cfg.warmup_iters:
        return peak * (step + 1) / cfg.warmup_iters
    span = max(1, total_steps - cfg.warmup_iters)
    progress = min(1.0, (step - cfg.warmup_iters) / span)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainStage, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only. The fused kernel (CUDA, and CPU since torch 2.4) updates
    all parameters in one pass instead of a dozen elementwise ops per tensor."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **extra)


def set_training_kernel(model: CausalLM, device_type: str, batch: int, seq: int, dtype: str,
                        record: TuningRecord) -> tuple[str, str]:
    """Choose the causal kernel for training `model` on batch x seq tokens and set it in every layer;
    returns (kernel, reason). Training, calibration and the benchmarks all choose through here."""
    c = model.config
    shape = AttentionShape(batch, c.num_attention_heads, c.num_key_value_heads, seq, c.head_dim,
                           c.num_hidden_layers, dtype, c.dropout)
    kernel, reason = choose_kernel(device_type, shape, record)
    model.set_attention_kernel(kernel)
    return kernel, reason


@dataclass
class StepSetup:
    """Everything one optimizer step touches, built once per stage by build_step."""

    model: CausalLM
    wrapped: torch.nn.Module  # what the step calls: the model, DDP around it, or the model sharded by FSDP
    world: World
    forward: CompiledForward  # the wrapped model's forward, eager or compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only: bf16 and fp32 need no loss scaling
    precision: Precision
    accumulation: int
    grad_clip: float
    attention: str  # the causal attention kernel chosen for this shape
    attention_reason: str
    compile_key: str  # the tuning record's entry for this model and step shape


def build_step(preset: Preset, cfg: TrainStage, precision: Precision, record: TuningRecord, *,
               mode: Mode | Callable[[str, str], Mode] = "eager", note: Callable[[str, dict[str, Any]], object] | None = None,
               warn: Callable[[str], object] | None = None, model: CausalLM | None = None,
               world: World | None = None) -> StepSetup:
    """The model (a fresh one unless given) on the precision's device, wrapped for the world, ready to train.

    `mode` is the compile mode, or a function of (compile key, attention kernel) that decides it once
    the attention kernel (part of what compiling's gain depends on) has been chosen."""
    model = model if model is not None else CausalLM(preset.model)
    model.to(precision.device)
    model.train()
    model.model.activation_checkpointing = preset.runtime.activation_checkpointing
    attention, attention_reason = set_training_kernel(model, precision.device.type, cfg.batch_size, cfg.max_seq_len,
                                                      precision.dtype, record)
    if precision.device.type == "cuda":
        # fp32 matmuls (a float32 run, and anything autocast leaves in fp32) on TF32 tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    key = compile_key(preset.model, precision.dtype, cfg.batch_size, cfg.max_seq_len, cfg.accumulation_steps,
                      preset.runtime.activation_checkpointing, attention)
    chosen = mode(key, attention) if callable(mode) else mode
    world = world or World.single()
    wrapped = world.wrap(model, precision.device)
    forward = CompiledForward(wrapped, chosen, record=record if preset.runtime.compile == "auto" else None, key=key,
                              note=note or (lambda message, figures: None), warn=warn or (lambda message: None))
    return StepSetup(
        model=model, wrapped=wrapped, world=world, forward=forward, optimizer=build_optimizer(model, cfg, precision.device),
        scaler=torch.amp.GradScaler("cuda") if precision.needs_grad_scaler else None, precision=precision,
        accumulation=cfg.accumulation_steps, grad_clip=cfg.grad_clip, attention=attention,
        attention_reason=attention_reason, compile_key=key,
    )


@dataclass
class StepOutput:
    loss: torch.Tensor  # this rank's share of the step's mean loss, on the device (reading it syncs the host)
    grad_norm: torch.Tensor | None  # before clipping; None when neither clipping nor a log step asked for it
    skipped: bool = False  # the loss or gradients were not finite and the update was not applied
    stop: bool = False  # a stop was asked for on some rank: every rank ends after this same step


def train_step(setup: StepSetup, batches: Iterator[Batch], lr: float, *, want_grad_norm: bool = False,
               skip_nonfinite: bool = False, stop_vote: bool = False) -> StepOutput:
    """One optimizer step over `setup.accumulation` micro-batches drawn from `batches`. With `skip_nonfinite`,
    a step whose loss or gradient norm is NaN/inf is not applied (`StepOutput.skipped`); checking costs a
    host synchronisation, so it is only done when asked.

    The loss of a step is the mean over every target token of all its micro-batches on all ranks (each
    piece is its token sum divided by that global count), so a step optimises the same objective on any
    world size and accumulation: a mean of per-batch means would weigh a short SFT batch like a long one.
    Under torchrun the count and the ranks' stop votes travel in one small all-reduce."""
    optimizer, scaler, precision, world = setup.optimizer, setup.scaler, setup.precision, setup.world
    for group in optimizer.param_groups:
        group["lr"] = lr
    micro = [next(batches) for _ in range(setup.accumulation)]
    local_tokens = sum(int((targets != IGNORE_INDEX).sum()) for _, targets in micro)
    step_tokens, votes = world.sum([float(local_tokens), float(stop_vote)])
    loss_tokens = torch.tensor(max(step_tokens, 1.0), dtype=torch.float32, device=precision.device)
    # DDP and FSDP average gradients over ranks; the pieces are already global shares, so scale back up.
    grad_scale = float(world.size)
    total = torch.zeros((), device=precision.device)
    for index, (inputs, targets) in enumerate(micro):
        inputs = inputs.to(precision.device, non_blocking=True)
        targets = targets.to(precision.device, non_blocking=True)
        with world.gradient_sync(setup.wrapped, sync=index == len(micro) - 1), precision.autocast():
            out = setup.forward(inputs, targets=targets, loss_tokens=loss_tokens)
            loss = out.loss
            if out.aux_loss is not None:  # MoE balance: a mean over micro-batches and ranks
                loss = loss + out.aux_loss / (setup.accumulation * world.size)
            (scaler.scale(loss * grad_scale) if scaler else loss * grad_scale).backward()
        total += loss.detach()
    if scaler:
        scaler.unscale_(optimizer)  # clip and measure true gradients, not scaled ones
    grad_norm = None
    if setup.grad_clip > 0:
        grad_norm = full_value(torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.grad_clip))
    elif want_grad_norm or skip_nonfinite:
        grad_norm = full_value(torch.nn.utils.clip_grad_norm_(setup.model.parameters(), float("inf")))
    stop = votes > 0
    if skip_nonfinite:
        assert grad_norm is not None  # measured just above whenever skip_nonfinite is set
        # The gradient norm is the same on every rank (gradients are reduced first); this rank's own loss is not.
        finite = torch.isfinite(grad_norm) if world.distributed else torch.isfinite(total) & torch.isfinite(grad_norm)
        if not bool(finite):
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.update()  # lowers the scale, as a skipped fp16 step does
            return StepOutput(total, grad_norm, skipped=True, stop=stop)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(total, grad_norm, stop=stop)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor from what FSDP2's clip_grad_norm_ returns (a DTensor holding the global norm)."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


def random_batches(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> Iterator[Batch]:
    """The same random batch forever: what calibration and benchmarks train on (the data's content does
    not change a step's cost)."""
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randint(3, vocab_size, (batch_size, seq_len + 1), generator=generator)
    inputs, targets = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    while True:
        yield inputs, targets
