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
from engine.hardware.device import Precision
from engine.hardware.tuning import TuningRecord
from engine.model.attention import AttentionShape, choose_kernel
from engine.model.transformer import CausalLM
from engine.train.compile_policy import CompiledForward, Mode, compile_key

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
    forward: CompiledForward  # the model's forward, eager or compiled
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
               warn: Callable[[str], object] | None = None, model: CausalLM | None = None) -> StepSetup:
    """The model (a fresh one unless given) on the precision's device, ready to train.

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
    forward = CompiledForward(model, chosen, record=record if preset.runtime.compile == "auto" else None, key=key,
                              note=note or (lambda message, figures: None), warn=warn or (lambda message: None))
    return StepSetup(
        model=model, forward=forward, optimizer=build_optimizer(model, cfg, precision.device),
        scaler=torch.amp.GradScaler("cuda") if precision.needs_grad_scaler else None, precision=precision,
        accumulation=cfg.accumulation_steps, grad_clip=cfg.grad_clip, attention=attention,
        attention_reason=attention_reason, compile_key=key,
    )


@dataclass
class StepOutput:
    loss: torch.Tensor  # mean loss over the step's micro-batches, on the device (reading it syncs the host)
    grad_norm: torch.Tensor | None  # before clipping; None when neither clipping nor a log step asked for it
    skipped: bool = False  # the loss or gradients were not finite and the update was not applied


def train_step(setup: StepSetup, batches: Iterator[Batch], lr: float, *, want_grad_norm: bool = False,
               skip_nonfinite: bool = False) -> StepOutput:
    """One optimizer step over `setup.accumulation` micro-batches drawn from `batches`. With `skip_nonfinite`,
    a step whose loss or gradient norm is NaN/inf is not applied (`StepOutput.skipped`); checking costs a
    host synchronisation, so it is only done when asked."""
    optimizer, scaler, precision = setup.optimizer, setup.scaler, setup.precision
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=precision.device)
    for _ in range(setup.accumulation):
        inputs, targets = next(batches)
        inputs = inputs.to(precision.device, non_blocking=True)
        targets = targets.to(precision.device, non_blocking=True)
        with precision.autocast():
            loss = setup.forward(inputs, targets=targets).loss / setup.accumulation
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach()
    if scaler:
        scaler.unscale_(optimizer)  # clip and measure true gradients, not scaled ones
    grad_norm = None
    if setup.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.grad_clip)
    elif want_grad_norm or skip_nonfinite:
        grad_norm = torch.nn.utils.clip_grad_norm_(setup.model.parameters(), float("inf"))
    if skip_nonfinite:
        assert grad_norm is not None  # measured just above whenever skip_nonfinite is set
        if not bool(torch.isfinite(total) & torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.update()  # lowers the scale, as a skipped fp16 step does
            return StepOutput(total, grad_norm, skipped=True)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(total, grad_norm)


def random_batches(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> Iterator[Batch]:
    """The same random batch forever: what calibration and benchmarks train on (the data's content does
    not change a step's cost)."""
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randint(3, vocab_size, (batch_size, seq_len + 1), generator=generator)
    inputs, targets = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    while True:
        yield inputs, targets
