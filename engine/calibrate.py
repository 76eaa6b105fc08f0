"""The estimator's measured half: which device a preset would run on, and a short real calibration.

`detect_target` resolves the preset's device and dtype the way training will (engine/device.py) and
finds how much memory there is; `calibrate` runs real training steps (the engine's model, fused AdamW,
the preset's batch, sequence length and precision, random tokens) and reports tokens/s and the
measured memory peak, which `minimind-studio estimate --calibrate` prints beside the prediction.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import Preset, StageName
from engine.device import resolve_precision
from engine.estimate import CPU_FRAMEWORK_BYTES, CUDA_CONTEXT_BYTES, Target
from engine.gpus import GpuSpec, find_gpu


@dataclass(frozen=True)
class Calibration:
    tokens_per_s: float
    tensor_peak_bytes: int  # most tensor memory alive at once during a step (the estimate's subject)
    process_peak_bytes: int  # RSS high-water on a CPU (allocator slack included); reserved on a GPU
    steps: int
    seconds: float
    attention: str = "sdpa"  # the causal attention kernel the step used, chosen as training chooses it


def tensor_peak_cpu(step) -> int:
    """Peak bytes of live CPU tensors during one call of step(), above what was alive before it,
    from the profiler's allocation records (CPU tensors have no allocator statistics like CUDA's)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    live = peak = 0
    for record in records:
        live += record.nbytes()
        peak = max(peak, live)
    return peak


def detect_target(preset: Preset, device: str | None = None, gpu_name: str | None = None,
                  gpu_mem_bytes: int | None = None, dtype: str | None = None) -> Target:
    """The device the run would use (or the one named), its memory, dtype and matmul peak."""
    spec: GpuSpec | None = find_gpu(gpu_name) if gpu_name else None
    if gpu_name and spec is None:
        raise ValueError(f"unknown GPU {gpu_name!r}: give its memory with --gpu-mem instead (e.g. --gpu-mem 8GiB)")
    wanted = device or ("cuda" if spec or gpu_mem_bytes else preset.runtime.device)
    dtype = dtype or preset.runtime.dtype
    # A GPU described by the flags (or asked for by --device on a machine without one) is hypothetical;
    # a preset that says cuda on a machine without CUDA fails below, as training would.
    hypothetical = spec is not None or (gpu_mem_bytes is not None and not wanted.startswith("cpu")) or (
        device is not None and device.startswith("cuda") and not torch.cuda.is_available())
    if hypothetical:
        # A hypothetical GPU: nothing to ask the driver, the table and the flags say what it is.
        if dtype == "auto":
            dtype = "bfloat16" if spec is None or spec.supports_bf16 else "float16"
        memory = gpu_mem_bytes or (int(spec.memory_gib * 1024**3) if spec else None)
        return Target("cuda", dtype, memory, spec.name if spec else "GPU", spec, spec.peak_tflops if spec else None)
    precision = resolve_precision("cpu" if wanted == "auto" and not torch.cuda.is_available() else wanted, dtype)
    if precision.device.type == "cuda":
        name = torch.cuda.get_device_name(precision.device)
        free, total = torch.cuda.mem_get_info(precision.device)
        spec = find_gpu(name)
        return Target("cuda", precision.dtype, gpu_mem_bytes or total, name, spec, spec.peak_tflops if spec else None)
    import psutil

    from engine.hardware import cpu_peak_tflops

    peak = cpu_peak_tflops(precision.dtype, Path(preset.runtime.cache_dir))
    return Target("cpu", precision.dtype, psutil.virtual_memory().available,
                  f"CPU ({torch.get_num_threads()} threads)", None, peak)


def calibrate(preset: Preset, stage: StageName, target: Target, steps: int = 20, warmup: int = 3) -> Calibration:
    """Run warmup + steps real training steps on random tokens; measure throughput and the memory peak."""
    from engine.attention import set_training_kernel
    from engine.model import CausalLM
    from engine.train import build_optimizer
    from engine.tuning import TuningRecord

    cfg = preset.stage(stage)
    # The preset's own GPU (cuda:N) when it names one, else the first.
    device_name = "cpu" if target.device == "cpu" else (
        preset.runtime.device if preset.runtime.device.startswith("cuda") else "cuda")
    precision = resolve_precision(device_name, target.dtype)
    device = precision.device
    generator = torch.Generator().manual_seed(0)
    model = CausalLM(preset.model).to(device)
    model.model.activation_checkpointing = preset.runtime.activation_checkpointing
    attention, _ = set_training_kernel(model, device.type, cfg.batch_size, cfg.max_seq_len, precision.dtype,
                                       TuningRecord(Path(preset.runtime.cache_dir), device))
    model.train()
    optimizer = build_optimizer(model, cfg, device)
    batch = torch.randint(3, preset.model.vocab_size, (cfg.batch_size, cfg.max_seq_len + 1), generator=generator)
    inputs, targets = batch[:, :-1].to(device), batch[:, 1:].to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        for _ in range(cfg.accumulation_steps):
            with precision.autocast():
                loss = model(inputs, targets=targets).loss / cfg.accumulation_steps
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        tensor_peak = torch.cuda.max_memory_allocated(device) + CUDA_CONTEXT_BYTES
        process_peak = torch.cuda.max_memory_reserved(device) + CUDA_CONTEXT_BYTES
    else:
        process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the profiler adds its own
        # Between steps the weights and AdamW moments are what is alive; the profiled step adds the rest.
        static = sum(t.numel() * t.element_size() for t in model.parameters())
        static += sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                      if torch.is_tensor(v))
        tensor_peak = CPU_FRAMEWORK_BYTES + static + tensor_peak_cpu(step)
    tokens = steps * cfg.batch_size * cfg.max_seq_len * cfg.accumulation_steps
    return Calibration(tokens / seconds, tensor_peak, process_peak, steps, seconds, attention)
