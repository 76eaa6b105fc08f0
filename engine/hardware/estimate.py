"""Pre-flight estimate: will this preset fit, what is the largest batch that does, how long will it take.

Torch-free arithmetic over the preset, so the studio can show it before launch without loading torch.
Memory is counted from what this engine's training step actually keeps alive (engine/model/transformer.py and
engine/model/kernels.py decide that; tests/engine/test_estimate.py checks the count against measured peaks):

    weights       float32 master weights, 4 bytes per parameter
    optimizer     AdamW's two float32 moments, 8 bytes per parameter (the fused kernel adds no copies)
    gradients     float32, 4 bytes per parameter; they grow as backward frees activations, so they
                  count towards the peak only when they outweigh the activations
    weight casts  under bf16/fp16 autocast, one 2-byte copy of every matmul weight per forward
    activations   what autograd keeps per token and layer until backward, times batch * seq * layers
    loss          the chunked loss's gradients and one chunk's float32 logits (never the full logits)
    transient     the largest short-lived working set: one layer's SwiGLU backward
    framework     the process itself: Python + torch on a CPU, the CUDA context on a GPU

The peak is weights + optimizer + max(casts + activations + max(loss, transient), gradients), with the
gradients inside the first term when micro-batches accumulate into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.config import ModelConfig, Preset, StageName
from engine.errors import EngineError
from engine.hardware.flops import (
    MATMUL_ATTENTION_MAX_BYTES,
    attention_probs_bytes,
    loss_chunk_rows,
)
from engine.hardware.gpus import GpuSpec

GiB = 1024**3
MiB = 1024**2
CPU_FRAMEWORK_BYTES = 240 * MiB  # RSS of a Python process with torch and the engine imported (measured)
CUDA_CONTEXT_BYTES = 600 * MiB  # CUDA context + cuBLAS/cuDNN workspaces, outside the allocator's count
CUDA_FRAGMENTATION = 1.10  # the caching allocator reserves ~10% above what is live at the peak
ASSUMED_MFU = 0.35  # without --calibrate: a fraction of peak that small models reach (bench/RESULTS.md)
ASSUMED_BYTES_PER_TOKEN = 3.5  # corpus bytes per token when the data has not been tokenized yet

Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class Target:
    """Where the run would execute."""

    device: Device
    dtype: str  # "float32" | "bfloat16" | "float16": the autocast compute dtype
    memory_bytes: int | None = None  # what the run may use (GPU memory or free RAM); None: unknown
    name: str = ""  # e.g. "NVIDIA H200" or "CPU (2 cores)"
    gpu: GpuSpec | None = None
    peak_tflops: float | None = None  # for time estimates without calibration
    attention: str | None = None  # the causal attention kernel, when known (None: whichever may be chosen)


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: int
    gradients: int
    optimizer: int
    weight_casts: int
    activations: int
    loss: int
    transient: int
    framework: int
    accumulating: bool = False  # gradient accumulation: later micro-batches run with the gradients alive

    @property
    def peak(self) -> int:
        """Bytes at the step's high-water mark, framework included."""
        working = self.weight_casts + self.activations + max(self.loss, self.transient)
        if self.accumulating:
            working += self.gradients
        return self.framework + self.weights + self.optimizer + max(working, self.gradients)

    def rows(self) -> list[tuple[str, int]]:
        return [("weights (fp32)", self.weights), ("gradients (fp32)", self.gradients),
                ("AdamW moments (fp32)", self.optimizer), ("autocast weight copies", self.weight_casts),
                ("activations", self.activations), ("loss chunk + its gradients", self.loss),
                ("backward working set", self.transient), ("framework", self.framework)]


@dataclass
class StageEstimate:
    stage: StageName
    batch_size: int
    seq_len: int
    accumulation_steps: int
    memory: MemoryBreakdown
    fits: bool | None  # None: the device's memory is unknown
    largest_batch: int | None  # the largest micro-batch that fits (None: unknown memory)
    total_steps: int | None
    tokens: int | None  # tokens the stage trains on
    tokens_per_s: float | None
    seconds: float | None
    throughput_source: str  # "measured ..." or "assumed ..."
    advice: list[str] = field(default_factory=list)
    world_size: int = 1  # processes (GPUs) training together; memory figures are per process
    strategy: str = "ddp"
    global_batch: int = 0  # sequences per optimizer step over all processes


def element_size(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def activation_bytes_per_token(config: ModelConfig, dtype: str, device: Device, seq: int,
                               checkpointing: bool = False) -> float:
    """Bytes autograd keeps per token for the whole layer stack (one layer's worth when checkpointing)."""
    a = element_size(dtype)
    C, I, nh = config.hidden_size, config.ffn_size, config.num_attention_heads
    kv = config.num_key_value_heads * config.head_dim  # attention reads grouped k/v, no expanded copies
    moe_inputs = 0
    if config.use_moe:
        I = I * (config.num_experts_per_tok + config.num_shared_experts)  # noqa: E741 - per token, all experts visited
        moe_inputs = a * C * (config.num_experts_per_tok + config.num_shared_experts) + 4 * config.num_experts
    per_layer = (
        4 * C + 4  # input RMSNorm: its fp32 input and one float per row
        + a * C  # the normed input, shared by q/k/v
        + a * (C + 2 * kv)  # q, k, v kept by attention
        + a * C + 4 * nh  # attention output + its log-sum-exp per head
        + a * C  # o_proj's input (the heads re-laid out)
        + 4 * C + 4  # post-attention RMSNorm
        + a * C  # the normed input, shared by gate/up
        + 2 * a * I  # gate and up, kept by the fused SwiGLU
        + moe_inputs
        + (2 * C if config.dropout > 0 else 0)  # dropout masks on the two residual branches
    )
    if config.dropout > 0 and device == "cpu":
        # The CPU flash kernel has no dropout: SDPA takes the math path and keeps the (heads, T, T)
        # softmax (float32 and compute dtype), its dropped-out copy and the mask; k/v expanded to all heads.
        per_layer += seq * nh * (4 + 2 * a + 1) + a * 2 * (C - kv)
    final = 4 * C + a * C  # final norm input + its output feeding the loss
    if checkpointing:
        return config.num_hidden_layers * 4 * C + per_layer + final  # layer inputs + one layer recomputed
    return config.num_hidden_layers * per_layer + final


def training_memory(config: ModelConfig, batch: int, seq: int, target: Target, checkpointing: bool = False,
                    accumulation_steps: int = 1, world: int = 1, strategy: str = "ddp") -> MemoryBreakdown:
    """One process's memory for a micro-batch of `batch` x `seq`. Under FSDP (world > 1) weights, gradients and
    AdamW moments are split over the processes, plus the two layers gathered whole at a time (the one
    computing and the one prefetched); DDP keeps everything whole and adds its gradient buckets."""
    from engine.hardware.flops import count_parameters

    total, _ = count_parameters(config)
    sharded = world > 1 and strategy == "fsdp"
    layer = (total - config.vocab_size * config.hidden_size) // max(1, config.num_hidden_layers)
    kept = -(-total // world) if sharded else total  # parameters whose fp32 state this process holds
    a = element_size(target.dtype)
    tokens = batch * seq
    C, V = config.hidden_size, config.vocab_size
    chunk_rows = min(tokens, loss_chunk_rows(V))
    # Per chunk: fp32 logits (reused in place for the gradient) + under autocast their 16-bit copy; kept: the
    # (tokens, C) hidden gradient and the (vocab, C) fp32 weight gradient.
    loss = chunk_rows * V * 4 + tokens * C * a + V * C * 4 + (chunk_rows * V * a + V * C * a if a == 2 else 0)
    inter = config.ffn_size * (config.num_experts_per_tok + config.num_shared_experts if config.use_moe else 1)
    transient = 6 * tokens * inter * a + 3 * tokens * C * 4  # SwiGLU backward temporaries + residual grads
    framework = CPU_FRAMEWORK_BYTES if target.device == "cpu" else CUDA_CONTEXT_BYTES
    activations = int(activation_bytes_per_token(config, target.dtype, target.device, seq, checkpointing) * tokens)
    layers = config.num_hidden_layers
    probs = attention_probs_bytes(layers, batch, config.num_attention_heads, seq, target.dtype)
    may_use_matmul = (target.device == "cpu" and target.dtype != "float32" and not config.dropout
                      and probs <= MATMUL_ATTENTION_MAX_BYTES and target.attention != "sdpa")
    if may_use_matmul:
        # The matmul attention kernel is, or may be, the faster one here (engine/model/attention.py): count what it keeps.
        activations += probs // layers if checkpointing else probs
    gathered = 2 * layer * 4 if sharded else 0  # unsharded fp32 layers alive during forward/backward
    buckets = 4 * total if world > 1 and not sharded else 0  # DDP's flat all-reduce buckets
    return MemoryBreakdown(
        weights=4 * kept + gathered, gradients=4 * kept + buckets, optimizer=8 * kept,
        weight_casts=a * (2 * layer if sharded else total) if a == 2 else 0, activations=activations, loss=int(loss),
        transient=int(transient), framework=framework, accumulating=accumulation_steps > 1,
    )


def device_peak(memory: MemoryBreakdown, target: Target) -> int:
    """What the device must hold: the step's peak, plus the CUDA allocator's reserve on a GPU."""
    if target.device == "cuda":
        return int((memory.peak - memory.framework) * CUDA_FRAGMENTATION) + memory.framework
    return memory.peak


def largest_batch(config: ModelConfig, seq: int, target: Target, checkpointing: bool = False,
                  accumulation_steps: int = 1, limit: int = 4096, world: int = 1, strategy: str = "ddp") -> int:
    """The largest micro-batch whose peak fits target.memory_bytes (0: not even one sequence)."""
    memory_bytes = target.memory_bytes
    if memory_bytes is None:
        raise ValueError("largest_batch needs the device memory")

    def fits(batch: int) -> bool:
        memory = training_memory(config, batch, seq, target, checkpointing, accumulation_steps, world, strategy)
        return device_peak(memory, target) <= memory_bytes

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:  # memory grows with the batch, so bisect
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def stage_tokens(preset: Preset, stage: StageName, data_bytes: int | None, world: int = 1) -> tuple[int | None, int | None]:
    """(optimizer steps, tokens trained on) for a stage: exact with max_steps, else from the data size."""
    cfg = preset.stage(stage)
    per_step = cfg.batch_size * cfg.max_seq_len * cfg.accumulation_steps * world
    if cfg.max_steps:
        return cfg.max_steps, cfg.max_steps * per_step
    if data_bytes is None:
        return None, None
    blocks = int(data_bytes / ASSUMED_BYTES_PER_TOKEN) // cfg.max_seq_len
    steps = max(1, cfg.epochs * (blocks // (cfg.batch_size * world)) // cfg.accumulation_steps)
    return steps, steps * per_step


def advise(preset: Preset, stage: StageName, target: Target, memory: MemoryBreakdown, best_batch: int | None) -> list[str]:
    """What to change when it does not fit, and device problems worth knowing before launch."""
    cfg = preset.stage(stage)
    notes: list[str] = []
    gpu = target.gpu
    if target.device == "cuda" and gpu is not None and not gpu.supports_bf16:
        capability = f"compute capability {gpu.capability[0]}.{gpu.capability[1]}, pre-Ampere"
        if target.dtype == "bfloat16":
            notes.append(f"{gpu.name} has no bfloat16 ({capability}): set runtime.dtype = 'float16' (trained with "
                         "loss scaling) or 'auto'; training in bfloat16 there stops with this advice.")
        elif target.dtype == "float16":
            notes.append(f"{gpu.name} has no bfloat16 ({capability}): float16 with loss scaling is used.")
    if target.memory_bytes is None or device_peak(memory, target) <= target.memory_bytes:
        return notes
    if best_batch:
        accumulate = -(-cfg.batch_size * cfg.accumulation_steps // best_batch)
        notes.append(f"lower {stage}.batch_size to {best_batch} and set {stage}.accumulation_steps = {accumulate} "
                     "(the same effective batch).")
    if not preset.runtime.activation_checkpointing:
        recomputed = largest_batch(preset.model, cfg.max_seq_len, target, True, max(2, cfg.accumulation_steps))
        if recomputed > (best_batch or 0):
            lead = "or turn" if best_batch else "turn"  # "or" only after the batch advice above
            notes.append(f"{lead} on runtime.activation_checkpointing (about a third slower): batch {recomputed} fits then.")
    if target.dtype == "float32" and (target.device == "cpu" or (gpu is not None and gpu.capability >= (7, 0))):
        notes.append("or train in 16-bit (runtime.dtype = 'bfloat16', or 'float16' before Ampere): activations halve.")
    static = memory.framework + memory.weights + memory.optimizer + memory.gradients
    if static >= target.memory_bytes:
        notes.append(f"the weights, gradients and AdamW moments alone need {static / GiB:.1f} GiB (16 bytes per "
                     "parameter): no batch size makes this model train here; use a smaller model or a bigger device.")
    elif not best_batch:
        half = cfg.max_seq_len // 2
        notes.append(f"not even one sequence of {cfg.max_seq_len} tokens fits: shorten {stage}.max_seq_len "
                     f"(e.g. {half}) or use a smaller model.")
    return notes


def estimate_stage(preset: Preset, stage: StageName, target: Target, *, data_bytes: int | None = None,
                   tokens_per_s: float | None = None, throughput_source: str | None = None) -> StageEstimate:
    """Everything the report shows for one stage; tokens_per_s from a calibration overrides the assumption."""
    from engine.hardware.flops import flops_per_token

    cfg = preset.stage(stage)
    checkpointing = preset.runtime.activation_checkpointing
    d = preset.distributed
    # nproc_per_node = auto counts the GPUs of the machine it runs on; planning elsewhere, give the number.
    world = (d.nproc_per_node if isinstance(d.nproc_per_node, int) else 1) * d.nnodes
    memory = training_memory(preset.model, cfg.batch_size, cfg.max_seq_len, target, checkpointing,
                             cfg.accumulation_steps, world, d.strategy)
    fits = best = None
    if target.memory_bytes is not None:
        fits = device_peak(memory, target) <= target.memory_bytes
        # With accumulation the gradients ride along every micro-batch, also when the batch is split further.
        best = largest_batch(preset.model, cfg.max_seq_len, target, checkpointing, max(2, cfg.accumulation_steps),
                             world=world, strategy=d.strategy)
    steps, tokens = stage_tokens(preset, stage, data_bytes, world)
    source = throughput_source or ""
    if tokens_per_s is None and target.peak_tflops:
        tokens_per_s = world * ASSUMED_MFU * target.peak_tflops * 1e12 / flops_per_token(preset.model, cfg.max_seq_len)
        source = (f"assumed {ASSUMED_MFU:.0%} MFU of {target.peak_tflops:.3g} TFLOP/s"
                  f"{f' on each of {world} processes' if world > 1 else ''}; --calibrate measures it")
    seconds = tokens / tokens_per_s if tokens and tokens_per_s else None
    if tokens is None:
        source = f"{source}; time unknown: {cfg.data_path} is not there and {stage}.max_steps is not set"
    return StageEstimate(stage, cfg.batch_size, cfg.max_seq_len, cfg.accumulation_steps, memory, fits, best, steps,
                         tokens, tokens_per_s, seconds, source.strip("; ") or "unknown (run with --calibrate)",
                         advise(preset, stage, target, memory, best), world, d.strategy,
                         cfg.batch_size * cfg.accumulation_steps * world)


def parse_bytes(text: str) -> int:
    """'8GiB', '8G', '8 GB', '512MiB', '24000000000' -> bytes (G/GB/GiB all mean 1024**3: cards are sold so)."""
    units = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB}
    cleaned = text.strip().lower().replace(" ", "").removesuffix("ib").removesuffix("b")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned and cleaned[-1] in units else (cleaned, "")
    try:
        value = float(number)
    except ValueError:
        raise EngineError(f"cannot read {text!r} as a size: write it like 8GiB, 8G or 512MiB") from None
    if value <= 0:
        raise EngineError(f"a memory size must be positive, got {text!r}")
    return int(value * units[unit])


def data_size(preset: Preset, stage: StageName) -> int | None:
    """Bytes of the stage's data file, or None when it is not there (yet)."""
    from engine.config import resolve_path

    path = resolve_path(preset.stage(stage).data_path)
    return path.stat().st_size if path.is_file() else None
