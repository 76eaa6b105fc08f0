"""Training throughput on 1 process against N processes (torchrun, DDP or FSDP), the same global batch.

    python -m bench.distributed [--shape tiny] [--nproc 1 2] [--strategy ddp] [--rounds 2] [--device cpu]

Each configuration is a real run (`python -m engine RUN_DIR`, the supervisor and torchrun for N > 1) of the
shape's pretrain stage; N processes get micro-batch batch/N, so every run optimises the same global batch.
tokens/s is the median of the step events after the first fifth (compile, warm-up and cache builds
excluded). On a CPU each process gets cores/N threads, so the comparison is "the same cores, split";
on a GPU box (`--device cuda --nproc 1 8`) it is one GPU against eight, and the per-GPU rate and the
scaling efficiency are what to read. Rounds are interleaved, because the CPUs these sessions get are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.train import ROOT, SHAPES, publish


def run_once(preset_path: Path, root: Path, batch: int, nproc: int, strategy: str, device: str, steps: int,
             tokenizer: Path) -> float:
    from engine.config import load_preset
    from engine.events import StepEvent, iter_events
    from engine.runs.run_dir import create_run, read_status

    preset = load_preset(preset_path, [
        'stages=["pretrain"]', f"tokenizer.from_dir={str(tokenizer)!r}", f"out_dir={str(root / 'runs')!r}",
        f"runtime.device={device!r}", f"pretrain.max_steps={steps}", f"pretrain.batch_size={batch // nproc}",
        "pretrain.log_interval=2", f"pretrain.save_interval={steps * 10}", "pretrain.eval_interval=0",
        f"distributed.nproc_per_node={nproc}", f"distributed.strategy={strategy!r}",
    ])
    run_dir = create_run(preset)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    with open(run_dir / "train.log", "ab") as log:
        subprocess.run([sys.executable, "-m", "engine", str(run_dir)], env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True, cwd=ROOT)
    assert read_status(run_dir)["state"] == "finished", (run_dir / "train.log").read_text()[-2000:]
    rates = [e.tokens_per_s for e in iter_events(run_dir / "events.jsonl") if isinstance(e, StepEvent)]
    return statistics.median(rates[len(rates) // 5:])



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--print-only", action="store_true")
    args = parser.parse_args()

    from engine.config import load_preset
    from engine.hardware.cpu import describe_cpu
    from engine.runs.pipeline import run_pipeline
    from engine.runs.run_dir import create_run

    preset_file, batch, _ = SHAPES[args.shape]
    preset_path = ROOT / preset_file
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer_run = create_run(load_preset(preset_path, ['stages=["tokenizer"]', f"out_dir={str(root / 'tok')!r}"]))
        run_pipeline(tokenizer_run)
        rates: dict[int, list[float]] = {n: [] for n in args.nproc}
        for round_index in range(args.rounds):
            for n in args.nproc:
                rate = run_once(preset_path, root, batch, n, args.strategy, args.device, args.steps, tokenizer_run / "tokenizer")
                rates[n].append(rate)
                print(f"round {round_index + 1}: {n} process(es): {rate:,.0f} tokens/s", flush=True)
    base = statistics.median(rates[args.nproc[0]])
    lines = [f"| processes | tokens/s (median of {args.rounds}) | per process | vs {args.nproc[0]} | rounds |",
             "|---|---|---|---|---|"]
    for n in args.nproc:
        median = statistics.median(rates[n])
        lines.append(f"| {n} | {median:,.0f} | {median / n:,.0f} | {median / base:.2f}x | "
                     f"{', '.join(f'{r:,.0f}' for r in rates[n])} |")
    where = describe_cpu() if args.device == "cpu" else args.device
    body = (f"{args.shape} pretrain, global batch {batch} x {SHAPES[args.shape][2]} tokens, {args.strategy}, "
            f"{args.steps} steps, {args.device}; each process has cores/N threads.\n\n" + "\n".join(lines))
    publish(f"Several processes ({args.strategy}) on {where}", body, print_only=args.print_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
