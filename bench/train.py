"""Training throughput and memory: this engine vs. Hugging Face LlamaForCausalLM, side by side.

    python -m bench.train [--shapes tiny,minimind-26m] [--dtypes float32,bfloat16] [--quick]

Both models get the same shape (hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings,
SDPA attention), the same packed token blocks and the same AdamW. Each (implementation, shape, dtype)
runs in its own subprocess so peak RSS is that configuration's alone. Tokens/s is the median of several
measured windows after warm-up; MFU is against this machine's matmul peak, measured in the same run.
Results are appended to bench/RESULTS.md and printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from engine.hardware.process_memory import peak_rss_mb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"

# (batch, seq) per shape: the minimind-26m orientation figures used batch 8 x 340.
SHAPES = {"tiny": ("presets/tiny.toml", 16, 256), "minimind-26m": ("presets/minimind-26m.toml", 8, 340),
          "minimind-104m": ("presets/minimind-104m.toml", 8, 340)}


def publish(title: str, body: str, print_only: bool = False) -> None:
    """Print a dated result section and append it to bench/RESULTS.md (results accumulate), unless
    print_only (a development run whose numbers should not be kept)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = f"\n## {title}, {stamp}\n\n{body}\n"
    print(report)
    if print_only:
        return
    with open(RESULTS, "a", encoding="utf-8") as handle:
        handle.write(report)


def build(impl: str, config):
    import torch

    torch.manual_seed(0)
    if impl == "engine":
        from engine.model.transformer import CausalLM

        return CausalLM(config)
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings, max_position_embeddings=config.max_position_embeddings,
        attention_bias=False, mlp_bias=False,
    )
    hf._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf)


def worker(impl: str, shape: str, dtype: str, warmup: int, windows: int, steps_per_window: int,
           device: str = "cpu", compile: bool = False, batch: int | None = None, seq: int | None = None,
           checkpointing: bool = False) -> dict:
    """One configuration, in this process: tokens/s windows and the peak memory (RSS on a CPU, the
    allocator's peak on a GPU), with the estimator's prediction beside it for the engine."""
    import torch

    from engine.config import load_preset
    from engine.hardware.estimate import Target, training_memory
    from engine.model.transformer import flops_per_token

    preset_path, default_batch, default_seq = SHAPES[shape]
    batch, seq = batch or default_batch, seq or default_seq
    config = load_preset(ROOT / preset_path).model
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what the engine's trainer sets on a GPU
    model = build(impl, config).to(dev)
    model.train()
    attention = None
    if impl == "engine":
        from engine.hardware.tuning import TuningRecord
        from engine.train.step import set_training_kernel

        model.model.activation_checkpointing = checkpointing
        # The kernel training would choose here, measured afresh in this process (no record is reused).
        attention, _ = set_training_kernel(model, dev.type, batch, seq, dtype, TuningRecord(None))
    elif checkpointing:
        model.gradient_checkpointing_enable()
    mode = "compiled" if compile is True else "eager"
    if compile == "auto":
        # What runtime.compile = "auto" does on a first long stage with no record: a timed trial.
        from engine.train.compile_policy import TRIAL_STEPS, CompiledForward, decide

        mode, _ = decide("auto", dev.type, None, 10**6, None)
        forward = CompiledForward(model, mode, note=lambda message, figures: print(message, file=sys.stderr),
                                  warn=lambda message: print(message, file=sys.stderr))
        warmup = max(warmup, 2 * TRIAL_STEPS + 3 if mode == "trial" else warmup)
    else:
        forward = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    generator = torch.Generator().manual_seed(1)
    stream = torch.randint(3, config.vocab_size, (batch * (seq + 1) * 4,), generator=generator)
    blocks = stream[: (stream.numel() // (seq + 1)) * (seq + 1)].view(-1, seq + 1).to(dev)  # packed, no padding
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step(i: int) -> None:
        rows = blocks[(i * batch) % (len(blocks) - batch + 1):][:batch]
        inputs, targets = rows[:, :-1], rows[:, 1:]
        with autocast:
            if impl == "engine":
                loss = forward(inputs, targets=targets).loss
            else:  # HF shifts the labels itself (seq - 1 targets instead of seq: the same work within 0.3%)
                loss = forward(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed_step(i: int) -> None:
        start = time.perf_counter()
        step(i)
        sync()
        if hasattr(forward, "step_done"):
            forward.step_done(time.perf_counter() - start)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    compile_start = time.perf_counter()
    for i in range(warmup):
        timed_step(i)
    sync()
    warmup_s = time.perf_counter() - compile_start
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rates = []
    for w in range(windows):
        start = time.perf_counter()
        for i in range(steps_per_window):
            step(warmup + w * steps_per_window + i)
        sync()
        rates.append(batch * seq * steps_per_window / (time.perf_counter() - start))
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mb = peak_rss_mb()
    target = Target("cuda" if dev.type == "cuda" else "cpu", dtype)
    predicted = training_memory(config, batch, seq, target, checkpointing)
    return {
        "impl": impl, "shape": shape, "dtype": dtype, "batch": batch, "seq": seq, "device": device,
        "compile": compile, "checkpointing": checkpointing, "tokens_per_s": statistics.median(rates),
        "attention": attention, "auto_chose": ("compiled" if forward.is_compiled else "eager") if compile == "auto" else None,
        "windows": rates, "warmup_s": warmup_s, "flops_per_token": flops_per_token(config, seq), "peak_mb": peak_mb,
        # the allocator-level prediction (the CUDA context and the CPU process are not in these peaks)
        "predicted_mb": (predicted.peak - predicted.framework) / 2**20,
        "params": sum(p.numel() for p in model.parameters()),
    }


def run_worker(impl: str, shape: str, dtype: str, quick: bool, **options) -> dict:
    args = ["--worker", impl, shape, dtype, "--options", json.dumps(options)] + (["--quick"] if quick else [])
    done = subprocess.run([sys.executable, "-m", "bench.train", *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{impl}/{shape}/{dtype} {options} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_cell(r: dict) -> str:
    if r["compile"] == "auto":
        return f"auto -> {r['auto_chose']}"
    return "on" if r["compile"] else "off"


def table(results: list[dict], peaks: dict[str, float]) -> str:
    lines = [("| shape | dtype | impl | compile | attention | tokens/s | each round | TFLOP/s | MFU | peak memory MiB "
              "| vs HF speed | vs HF memory |"),
             "|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    eager_hf = {(r["shape"], r["dtype"]): r for r in results if r["impl"] == "hf" and not r["compile"]}
    for r in results:
        achieved = r["tokens_per_s"] * r["flops_per_token"]
        hf = eager_hf.get((r["shape"], r["dtype"]))
        ratio = mem = ""
        if hf and r is not hf:
            ratio = f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}x"
            mem = f"{r['peak_mb'] / hf['peak_mb']:.2f}x"
        mfu = achieved / (peaks[r["dtype"]] * 1e12)
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['impl']} | {compile_cell(r)} | {r.get('attention') or 'sdpa'} | "
                     f"{r['tokens_per_s']:,.0f} | {' / '.join(r.get('rounds', []))} | {achieved / 1e12:.3f} | "
                     f"{f'{mfu:.1%}' if mfu <= 1 else 'peak unknown'} | "
                     f"{r['peak_mb']:,.0f} | {ratio} | {mem} |")
    return "\n".join(lines)


def median_of_rounds(runs: list[dict]) -> dict:
    """One row from several interleaved runs of a configuration: the median tokens/s, the highest peak."""
    row = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
    rounds = [f"{r['tokens_per_s']:,.0f}" + (f" ({r['auto_chose']})" if r.get("auto_chose") else "") for r in runs]
    return {**row, "rounds": rounds, "peak_mb": max(r["peak_mb"] for r in runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,minimind-26m")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--quick", action="store_true", help="fewer windows (a smoke run, numbers are noisy)")
    parser.add_argument("--variants", default="engine,engine+compile,engine+auto,hf",
                        help="comma list of engine, engine+compile, engine+auto, hf, hf+compile")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every configuration this many times, interleaved, and keep the median (a shared "
                             "host's slow spells then hit every variant alike)")
    parser.add_argument("--no-publish", action="store_true", help="print the table without appending it to RESULTS.md")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "SHAPE", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = json.loads(args.options)
    warmup, windows, per_window = (1, 2, 1) if args.quick else (2, 5, 2)
    if args.worker:
        warmup, windows, per_window = options.pop("schedule", (warmup, windows, per_window))
        print(json.dumps(worker(*args.worker, warmup, windows, per_window, **options)))
        return 0

    import torch

    from engine.hardware.cpu import describe_cpu
    from engine.hardware.peak import probe_cpu_peak_tflops

    dtypes = args.dtypes.split(",")
    # Probed before and after the runs; the higher counts (a busy moment only ever lowers a probe).
    peaks = {dtype: probe_cpu_peak_tflops(dtype) for dtype in dtypes}
    configs = [(shape, dtype, variant) for shape in args.shapes.split(",") for dtype in dtypes
               for variant in args.variants.split(",")]
    runs: dict[tuple, list[dict]] = {config: [] for config in configs}
    for round_ in range(args.rounds):
        for shape, dtype, variant in configs:
            impl, _, how = variant.partition("+")
            result = run_worker(impl, shape, dtype, args.quick, compile="auto" if how == "auto" else bool(how))
            runs[(shape, dtype, variant)].append(result)
            chose = f" (auto -> {result['auto_chose']})" if result.get("auto_chose") else ""
            print(f"round {round_ + 1} {shape:>13} {dtype:>8} {variant:>15}: {result['tokens_per_s']:8,.0f} tok/s{chose}, "
                  f"peak memory {result['peak_mb']:,.0f} MiB, warm-up {result['warmup_s']:.0f} s", flush=True)
    peaks = {dtype: max(peak, probe_cpu_peak_tflops(dtype)) for dtype, peak in peaks.items()}
    results = [median_of_rounds(runs[config]) for config in configs]
    peak_text = ", ".join(f"{peaks[d]:.3f} {d}" for d in dtypes)
    publish(f"Training throughput on {describe_cpu()}",
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak {peak_text} TFLOP/s (best of "
            f"6 probes before and 6 after the runs); tokens/s is the median of {args.rounds} interleaved round(s) of "
            f"each configuration{' (quick run: noisy)' if args.quick else ''}. Compiled rows include no compile time "
            "(warm-up 30-90 s); 'auto' is runtime.compile = \"auto\" on a first long stage: a timed eager/compiled "
            "trial, then the faster. The engine's attention kernel is chosen as training chooses it (measured in each "
            f"process).\n\n{table(results, peaks)}",
            print_only=args.no_publish)
    return 0


if __name__ == "__main__":
    sys.exit(main())
