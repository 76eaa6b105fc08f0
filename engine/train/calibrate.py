"""The estimator's measured half: which device a preset would run on, and a short real calibration.

`detect_target` resolves the preset's device and dtype the way training will (engine/hardware/device.py) and
finds how much memory there is; `calibrate` runs real training steps (training's own step from
engine/train/step.py: the preset's batch, sequence length, precision, clipping and compile choice, on
random tokens) and reports tokens/s and the measured memory peak, which `minimind-studio estimate --calibrate` prints beside the prediction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import Preset, StageName
from engine.errors import EngineError
from engine.hardware.device import resolve_precision
from engine.hardware.estimate import CPU_FRAMEWORK_BYTES, CUDA_CONTEXT_BYTES, Target
from engine.hardware.gpus import GpuSpec, find_gpu
from engine.hardware.process_memory import peak_rss_mb


@dataclass(frozen=True)
class Calibration:
    tokens_per_s: float
    tensor_peak_bytes: int  # most tensor memory alive at once during a step (the estimate's subject)
    process_peak_bytes: int  # RSS high-water on a CPU (allocator slack included); reserved on a GPU
    steps: int
    seconds: float
    attention: str = "sdpa"  # the causal attention kernel the step used, chosen as training chooses it
    compiled: bool = False  # whether the step ran torch.compile'd, as training of a long stage would


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
        raise EngineError(f"unknown GPU {gpu_name!r}: give its memory with --gpu-mem instead (e.g. --gpu-mem 8GiB)")
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

    from engine.hardware.peak import cpu_peak_tflops

    peak = cpu_peak_tflops(precision.dtype, Path(preset.runtime.cache_dir))
    return Target("cpu", precision.dtype, psutil.virtual_memory().available,
                  f"CPU ({torch.get_num_threads()} threads)", None, peak)


def calibrate(preset: Preset, stage: StageName, target: Target, steps: int = 20, warmup: int = 3) -> Calibration:
    """Run warmup + steps real training steps on random tokens; measure throughput and the memory peak.

    The step is training's own (engine/train/step.py), compiled when training would compile a long
    stage of this shape: on CUDA with compile = "auto" or "on", on a CPU when the machine's tuning
    record says compiling paid here (a first measurement is training's job: calibration is too short)."""
    from engine.hardware.tuning import TuningRecord
    from engine.train.compile_policy import decide
    from engine.train.step import build_step, random_batches, train_step

    cfg = preset.stage(stage)
    # The preset's own GPU (cuda:N) when it names one, else the first.
    device_name = "cpu" if target.device == "cpu" else (
        preset.runtime.device if preset.runtime.device.startswith("cuda") else "cuda")
    precision = resolve_precision(device_name, target.dtype)
    device = precision.device
    record = TuningRecord(Path(preset.runtime.cache_dir), device)

    def long_stage_mode(key: str, attention: str):
        mode, _ = decide(preset.runtime.compile, device.type, record.get(key), 10**9, None)
        return "eager" if mode == "trial" else mode

    setup = build_step(preset, cfg, precision, record, mode=long_stage_mode)
    batches = random_batches(preset.model.vocab_size, cfg.batch_size, cfg.max_seq_len)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        train_step(setup, batches, cfg.learning_rate)

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
        process_peak = int(peak_rss_mb() * 2**20)  # before the profiler adds its own
        # Between steps the weights and AdamW moments are what is alive; the profiled step adds the rest.
        static = sum(t.numel() * t.element_size() for t in setup.model.parameters())
        static += sum(v.numel() * v.element_size() for s in setup.optimizer.state.values() for v in s.values()
                      if torch.is_tensor(v))
        tensor_peak = CPU_FRAMEWORK_BYTES + static + tensor_peak_cpu(step)
    tokens = steps * cfg.batch_size * cfg.max_seq_len * cfg.accumulation_steps
    return Calibration(tokens / seconds, tensor_peak, process_peak, steps, seconds, setup.attention,
                       setup.forward.is_compiled)
