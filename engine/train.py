"""One training loop for pretraining and SFT.

The stages differ only in their data (packed text blocks vs. packed conversations with a loss mask)
and their starting weights; everything else — schedule, accumulation, precision, evaluation,
checkpoints, stop requests and resume — is shared here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from engine.attention import set_training_kernel
from engine.compile_policy import EAGER_CPU_MFU, CompiledForward, compile_key, decide
from engine.blocks import EpochSampler, PretrainBlocks, SFTBlocks, split_indices
from engine.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_model_weights,
    restore_trainer_state,
    save_checkpoint,
)
from engine.config import Preset, StageName, TrainStage
from engine.data import build_token_cache
from engine.device import Precision, memory_snapshot, resolve_precision
from engine.events import EventLog
from engine.generate import Sampling, generate
from engine.hardware import MfuMeter, peak_flops
from engine.model import CausalLM, count_parameters, flops_per_token
from engine.tokenizer import load_tokenizer
from engine.tuning import TuningRecord


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the message carries the step and advice."""


@dataclass
class StageResult:
    stage: str
    state: str  # "finished" | "stopped"
    step: int
    total_steps: int
    final_loss: float | None
    eval_loss: float | None
    checkpoint: Path | None
    seconds: float
    tokens_seen: int
    extra: dict[str, Any] = field(default_factory=dict)


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


def make_blocks(stage: StageName, preset: Preset, tokenizer_dir: Path, log: EventLog):
    cfg = preset.stage(stage)
    kind = "pretrain" if stage == "pretrain" else "sft"
    started = time.perf_counter()
    workers = preset.runtime.data_workers
    cache = build_token_cache(
        Path(cfg.data_path), tokenizer_dir, kind, Path(preset.runtime.cache_dir), on_bad_line=cfg.on_bad_line,
        stage=stage, workers=None if workers == "auto" else workers, progress=CacheProgress(stage, log),
    )
    meta = dict(cache.meta)
    skipped = meta.get("stats", {}).get("skipped", 0)
    if skipped:
        log.emit("warning", stage=stage, message=f"skipped {skipped} malformed line(s) of {cfg.data_path}")
    blocks = PretrainBlocks(cache, cfg.max_seq_len) if kind == "pretrain" else SFTBlocks(cache, cfg.max_seq_len)
    info = {
        "data_path": cfg.data_path,
        "n_docs": cache.n_docs,
        "n_tokens": cache.n_tokens,
        "blocks": len(blocks),
        "cache_seconds": round(time.perf_counter() - started, 3),
        "from_cache": bool(getattr(cache, "from_cache", False)),
    }
    if kind == "sft":
        info["padding_fraction"] = round(float(blocks.padding_fraction), 4)
    return blocks, info


class CacheProgress:
    """Reports a token-cache build as `cache_progress` events (bytes done, MB/s, ETA): on a 10 GB file it
    is minutes of a run. At most one event per `every` seconds, plus the last."""

    def __init__(self, stage: str, log: EventLog, every: float = 2.0) -> None:
        self.stage, self.log, self.every = stage, log, every
        self.started = time.perf_counter()
        self.last = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        self.log.emit("cache_progress", stage=self.stage, bytes_done=done, bytes_total=total,
                      mb_per_s=rate / 1e6, eta_s=(total - done) / rate if rate > 0 else None)


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = zip(*batch)
    return torch.stack(inputs), torch.stack(targets)


def _loader(blocks, sampler: EpochSampler, num_workers: int, pin: bool, seed: int):
    # A private generator: otherwise creating the iterator draws from the global RNG, and a resumed
    # run (which restores the global RNG first) would get different dropout masks.
    return torch.utils.data.DataLoader(
        blocks, batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate, pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
    )


def _endless(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches across epoch boundaries: each pass over the loader is one epoch of the sampler."""
    while True:
        yield from loader


@torch.no_grad()
def evaluate(model: CausalLM, blocks, indices, batch_size: int, max_batches: int, precision: Precision) -> float | None:
    """Mean held-out loss over up to max_batches batches (token-weighted within each batch)."""
    if len(indices) == 0:
        return None
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, min(len(indices), batch_size * max_batches), batch_size):
        inputs, targets = _collate([blocks[int(i)] for i in indices[start : start + batch_size]])
        inputs, targets = inputs.to(precision.device), targets.to(precision.device)
        with precision.autocast():
            out = model(inputs, targets=targets)
        losses.append(out.loss.float().item())
    model.train(was_training)
    return sum(losses) / len(losses)


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
    micro_per_step = cfg.accumulation_steps
    batches_per_epoch = len(train_idx) // cfg.batch_size
    if batches_per_epoch < 1:
        raise ValueError(
            f"{stage}: {len(train_idx)} training sequences of {cfg.max_seq_len} tokens cannot fill one batch of "
            f"{cfg.batch_size}; lower {stage}.batch_size or {stage}.max_seq_len, or add data to {cfg.data_path}"
        )
    total_steps = cfg.max_steps or max(1, cfg.epochs * batches_per_epoch // micro_per_step)

    tokenizer = load_tokenizer(tokenizer_dir)
    model = CausalLM(preset.model)
    if init_from is not None:
        load_model_weights(model, init_from.path)
    model.to(precision.device)
    model.train()
    model.model.activation_checkpointing = preset.runtime.activation_checkpointing
    record = TuningRecord(Path(preset.runtime.cache_dir), precision.device)
    attention, attention_reason = set_training_kernel(model, precision.device.type, cfg.batch_size, cfg.max_seq_len,
                                                      precision.dtype, record)
    if precision.device.type == "cuda":
        # fp32 matmuls (a float32 run, and anything autocast leaves in fp32) on TF32 tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    optimizer = build_optimizer(model, cfg, precision.device)
    scaler = torch.amp.GradScaler("cuda") if precision.needs_grad_scaler else None

    stage_dir = run_dir / "checkpoints" / stage
    step, tokens_seen, consumed = 0, 0, 0
    resumed_from = latest_checkpoint(stage_dir) if resume else None
    if resumed_from is not None:
        load_model_weights(model, resumed_from.path)
        restore_trainer_state(resumed_from, optimizer)
        step, tokens_seen = resumed_from.step, resumed_from.state["tokens_seen"]
        consumed = resumed_from.state["batches_consumed"]

    sampler = EpochSampler(train_idx, cfg.batch_size, seed=preset.seed)
    sampler.load_state_dict(sampler_state(consumed, batches_per_epoch))
    batches = _endless(_loader(blocks, sampler, preset.runtime.num_workers, precision.device.type == "cuda", preset.seed))
    total_params, active_params = count_parameters(preset.model)
    flops_tok = flops_per_token(preset.model, cfg.max_seq_len)
    peak = peak_flops(precision, preset.runtime.peak_tflops, Path(preset.runtime.cache_dir))
    tokens_per_step = cfg.batch_size * cfg.max_seq_len * micro_per_step
    mfu_meter = MfuMeter(peak, warn=lambda message: log.emit("warning", stage=stage, message=message))
    tuning_key = compile_key(preset.model, precision.dtype, cfg.batch_size, cfg.max_seq_len, micro_per_step,
                               preset.runtime.activation_checkpointing, attention)
    eager_estimate = ((total_steps - step) * tokens_per_step * flops_tok / (EAGER_CPU_MFU * peak.flops)
                      if peak.flops else None)
    mode, compile_reason = decide(preset.runtime.compile, precision.device.type, record.get(tuning_key),
                                  total_steps - step, eager_estimate)
    forward = CompiledForward(
        model, mode, record=record if preset.runtime.compile == "auto" else None, key=tuning_key,
        note=lambda message, figures: log.emit("note", stage=stage, message=message, **figures),
        warn=lambda message: log.emit("warning", stage=stage, message=message))
    log.emit(
        "stage_start", stage=stage, total_steps=total_steps, start_step=step, resumed=resumed_from is not None,
        device=str(precision.device), dtype=precision.dtype, dtype_reason=precision.why,
        params=total_params, active_params=active_params, tokens_per_step=tokens_per_step,
        compile=mode != "eager", compile_mode=mode, compile_reason=compile_reason,
        attention=attention, attention_reason=attention_reason, peak_source=peak.source,
        init_from=str(init_from.path) if init_from else None, **data_info,
    )

    def checkpoint_state() -> dict[str, Any]:
        return {
            "stage": stage, "step": step, "total_steps": total_steps, "tokens_seen": tokens_seen,
            "batches_consumed": consumed, "sampler": sampler_state(consumed, batches_per_epoch),
            "model": preset.model.model_dump(mode="json"), "preset": preset.model_dump(mode="json"),
            "dtype": precision.dtype, "metrics": {"loss": last_loss, "eval_loss": last_eval},
        }

    def save() -> Path:
        t0 = time.perf_counter()
        path = save_checkpoint(stage_dir, model=model, optimizer=optimizer, state=checkpoint_state(),
                               tokenizer_dir=tokenizer_dir, keep=cfg.keep_checkpoints)
        log.emit("checkpoint", stage=stage, step=step, path=str(path), seconds=round(time.perf_counter() - t0, 3))
        return path

    last_loss: float | None = None
    last_eval: float | None = None
    last_saved: Path | None = None
    window_loss = torch.zeros((), device=precision.device)
    window_steps, window_start = 0, time.perf_counter()
    state = "finished"
    while step < total_steps:
        step_start = time.perf_counter()
        lr = lr_at(step, total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(micro_per_step):
            inputs, targets = next(batches)
            inputs = inputs.to(precision.device, non_blocking=True)
            targets = targets.to(precision.device, non_blocking=True)
            with precision.autocast():
                loss = forward(inputs, targets=targets).loss / micro_per_step
            (scaler.scale(loss) if scaler else loss).backward()
            window_loss += loss.detach()
            consumed += 1
        if scaler:
            scaler.unscale_(optimizer)
        is_log_step = (step + 1) % cfg.log_interval == 0 or step + 1 == total_steps
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        elif is_log_step:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        forward.step_done(time.perf_counter() - step_start)
        step += 1
        tokens_seen += tokens_per_step
        window_steps += 1

        if is_log_step:
            # The only host synchronisation in the loop: reading the loss once per log interval.
            last_loss = window_loss.item() / window_steps
            if not math.isfinite(last_loss):
                raise NonFiniteLoss(
                    f"{stage}: the loss became {last_loss} at step {step}. The last good checkpoint is kept. "
                    f"Lower {stage}.learning_rate, raise warmup_iters, keep grad_clip on, or check the data."
                )
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_steps * tokens_per_step / elapsed
            log.emit(
                "step", stage=stage, step=step, total_steps=total_steps, loss=last_loss, lr=lr,
                grad_norm=float(grad_norm) if grad_norm is not None else None,
                tokens_per_s=tokens_per_s, samples_per_s=window_steps * cfg.batch_size * micro_per_step / elapsed,
                mfu=mfu_meter(flops_tok * tokens_per_s), mfu_note=mfu_meter.note,
                eta_s=(total_steps - step) * elapsed / window_steps, tokens_seen=tokens_seen,
                epoch=consumed / batches_per_epoch, **memory_snapshot(precision.device),
            )
            window_loss.zero_()
            window_steps, window_start = 0, time.perf_counter()

        if cfg.eval_interval and step % cfg.eval_interval == 0 and step < total_steps:
            last_eval = evaluate(model, blocks, eval_idx, cfg.batch_size, cfg.eval_max_batches, precision)
            log.emit("eval", stage=stage, step=step, eval_loss=last_eval)
            emit_sample(model, blocks, eval_idx, tokenizer, stage, step, log)
            window_start = time.perf_counter()
        stopping = should_stop()
        if step % cfg.save_interval == 0 or stopping:
            last_saved = save()
            window_start = time.perf_counter()
        if stopping and step < total_steps:
            state = "stopped"
            break

    if state == "finished":
        last_eval = evaluate(model, blocks, eval_idx, cfg.batch_size, cfg.eval_max_batches, precision)
        if last_eval is not None:
            log.emit("eval", stage=stage, step=step, eval_loss=last_eval)
        emit_sample(model, blocks, eval_idx, tokenizer, stage, step, log)
        if last_saved is None or not last_saved.name.endswith(f"{step:06d}"):
            last_saved = save()
    seconds = time.perf_counter() - started
    log.emit("stage_end", stage=stage, state=state, step=step, total_steps=total_steps, loss=last_loss,
             eval_loss=last_eval, seconds=round(seconds, 3), tokens_seen=tokens_seen)
    return StageResult(stage, state, step, total_steps, last_loss, last_eval, last_saved, seconds, tokens_seen,
                       extra=data_info)


def emit_sample(model: CausalLM, blocks, eval_idx, tokenizer, stage: str, step: int, log: EventLog,
                max_new_tokens: int = 32) -> None:
    """A greedy continuation of a held-out sequence's opening, so a watcher sees what the model has learned.
    SFT: the prompt is the sequence up to its first answer token (the question and the assistant header)."""
    inputs, targets = blocks[int(eval_idx[0]) if len(eval_idx) else 0]
    answer_at = (targets != -100).nonzero()
    cut = int(answer_at[0]) + 1 if stage == "sft" and len(answer_at) else min(16, len(inputs))
    prompt = inputs[:cut].tolist()
    stops = {tokenizer.eos_token_id} if stage == "sft" else set()
    new = list(generate(model, prompt, Sampling(temperature=0.0, max_new_tokens=max_new_tokens), stops))
    log.emit("sample", stage=stage, step=step, prompt=tokenizer.decode(prompt), text=tokenizer.decode(new))


def sampler_state(consumed: int, batches_per_epoch: int) -> dict[str, int]:
    return {"epoch": consumed // batches_per_epoch, "position": consumed % batches_per_epoch}
