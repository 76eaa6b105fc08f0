"""Training memory: peak vs. Hugging Face Llama at batch 32 x 512, the activation-checkpointing trade-off,
and flatness over a long run.

    python -m bench.memory [--shape minimind-26m] [--flat-steps 1000] [--skip-peak] [--skip-flat] [--no-publish]

Peak: each configuration in its own process (bench/train.py's worker), a few steps at batch 32 x 512,
peak RSS on a CPU (allocator-level peak on a GPU), tokens/s beside it, and the estimator's prediction of
the engine's tensor memory. Flatness: the real training loop (engine.runs.pipeline, the tiny preset with
evals, samples and checkpoints on) for --flat-steps steps; RSS is read from its step events and the
benchmark fails unless RSS at the last step is within 2% of RSS at step 50.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from bench.train import ROOT, publish, run_worker
from engine.hardware.estimate import CPU_FRAMEWORK_BYTES


def peak_rows(shape: str, batch: int, seq: int) -> tuple[str, list[dict]]:
    configs = [("float32", "engine", False), ("float32", "hf", False), ("float32", "engine", True),
               ("bfloat16", "engine", False), ("bfloat16", "hf", False), ("bfloat16", "engine", True)]
    results = []
    for dtype, impl, checkpointing in configs:
        r = run_worker(impl, shape, dtype, False, batch=batch, seq=seq, checkpointing=checkpointing, schedule=(1, 2, 1))
        results.append(r)
        print(f"{dtype:>8} {impl:>6} ckpt={checkpointing!s:5}: {r['tokens_per_s']:7,.0f} tok/s, peak {r['peak_mb']:,.0f} MiB",
              flush=True)
    lines = ["| dtype | impl | activation checkpointing | tokens/s | peak RSS MiB | vs HF | estimated tensors MiB |",
             "|---|---|---|---:|---:|---:|---:|"]
    hf = {r["dtype"]: r for r in results if r["impl"] == "hf"}
    for r in results:
        ratio = f"{r['peak_mb'] / hf[r['dtype']]['peak_mb']:.2f}x" if r["impl"] == "engine" else ""
        estimate = f"{r['predicted_mb'] + CPU_FRAMEWORK_BYTES / 2**20:,.0f}" if r["impl"] == "engine" else ""
        lines.append(f"| {r['dtype']} | {r['impl']} | {'on' if r['checkpointing'] else 'off'} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_mb']:,.0f} | {ratio} | {estimate} |")
    return "\n".join(lines), results


def flat_run(steps: int) -> dict:
    """The real loop on the tiny preset; returns RSS per logged step."""
    from engine.config import load_preset
    from engine.runs.pipeline import run_pipeline
    from engine.runs.run_dir import create_run

    with tempfile.TemporaryDirectory() as tmp:
        preset = load_preset(ROOT / "presets/tiny.toml", overrides=[
            "stages=['tokenizer','pretrain']", f"pretrain.max_steps={steps}", "pretrain.log_interval=10",
            "pretrain.eval_interval=100", "pretrain.save_interval=250", "runtime.compile=on",
            f"out_dir='{tmp}/runs'", f"runtime.cache_dir='{tmp}/cache'"])
        run_dir = create_run(preset)
        start = time.perf_counter()
        run_pipeline(run_dir)
        seconds = time.perf_counter() - start
        rss = {}
        for line in (run_dir / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event.get("kind") == "step":
                rss[event["step"]] = event["rss_mb"]
    return {"rss": rss, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="minimind-26m")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--flat-steps", type=int, default=1000)
    parser.add_argument("--skip-peak", action="store_true")
    parser.add_argument("--skip-flat", action="store_true")
    parser.add_argument("--no-publish", action="store_true")
    args = parser.parse_args()

    import torch

    parts = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU."]
    if not args.skip_peak:
        table, _ = peak_rows(args.shape, args.batch, args.seq)
        parts.append(f"Peak at batch {args.batch} x {args.seq}, {args.shape} shape (RSS includes the process, "
                     f"~240 MiB, and glibc's heap slack; the estimate column is tensors + 240 MiB):\n\n{table}")
    ok = True
    if not args.skip_flat:
        flat = flat_run(args.flat_steps)
        rss = flat["rss"]
        last_step = max(rss)
        # Peaks, not single readings: glibc's heap makes one RSS reading wobble by a few percent.
        early = max(v for s, v in rss.items() if 50 <= s <= 150)
        late = max(v for s, v in rss.items() if s > last_step - 100)
        growth = late / early - 1
        ok = growth <= 0.02
        marks = [s for s in (50, 100, 250, 500, 750, last_step) if s in rss]
        parts.append(f"Flatness: the real loop, tiny preset, {last_step} steps in {flat['seconds']:.0f} s with compile on, evals every "
                     f"100 and checkpoints every 250 steps. RSS MiB at steps " +
                     ", ".join(f"{s}: {rss[s]:,.1f}" for s in marks) +
                     f". Peak over the last 100 steps vs peak over steps 50-150: {growth:+.2%} "
                     f"({'within' if ok else 'OUTSIDE'} the 2% bound).")
    publish("Training memory", "\n\n".join(parts), print_only=args.no_publish)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
