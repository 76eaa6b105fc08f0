"""Bookkeeping costs of a run: one step event (events.jsonl + status listener) and one checkpoint write.

    python -m bench.overhead [--shape minimind-26m]

The checkpoint is a real one: float32 weights, AdamW moments after a step, RNG, state.json and the
tokenizer, written atomically with fsync (what a run does every save_interval).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.train import ROOT, SHAPES, publish


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="minimind-26m", choices=sorted(SHAPES))
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()

    from engine.checkpoints.checkpoint import gather_optimizer_state, model_tensors, save_checkpoint
    from engine.config import load_preset
    from engine.data.tokenizer import train_tokenizer
    from engine.events import EventLog, StepEvent
    from engine.model.transformer import CausalLM
    from engine.runs.pipeline import status_listener
    from engine.runs.run import Run
    from engine.runs.run_dir import create_run

    preset = load_preset(ROOT / SHAPES[args.shape][0])
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        preset.out_dir = str(tmp_path / "runs")
        run_dir = create_run(preset)
        log = EventLog(run_dir / "events.jsonl", [status_listener(Run(run_dir))])
        event = {"stage": "pretrain", "total_steps": 10_000, "loss": 3.21, "lr": 4e-4, "grad_norm": 0.8,
                 "tokens_per_s": 12345.6, "samples_per_s": 36.3, "mfu": 0.41, "eta_s": 3600.0, "tokens_seen": 1, "epoch": 0.1,
                 "rss_mb": 1234.5}
        start = time.perf_counter()
        for step in range(args.events):
            log.emit(StepEvent(step=step, **event))
        per_event_us = (time.perf_counter() - start) / args.events * 1e6
        log.close()

        train_tokenizer(ROOT / "dataset" / "pretrain.jsonl", tmp_path / "tok", 2000, heldout_lines=0)
        model = CausalLM(preset.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model(torch.randint(0, 100, (1, 16)), targets=torch.randint(0, 100, (1, 16))).loss.backward()
        optimizer.step()
        times = []
        for step in range(1, 4):
            t0 = time.perf_counter()
            path = save_checkpoint(run_dir / "checkpoints" / "pretrain", model_state=model_tensors(model),
                                   optimizer_state=gather_optimizer_state(model, optimizer),
                                   state={"stage": "pretrain", "step": step, "model": preset.model.model_dump(mode="json")},
                                   tokenizer_dir=tmp_path / "tok", keep=2)
            times.append(time.perf_counter() - t0)
        size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20

    publish("Run bookkeeping",
            f"- one step event (json line + flush + throttled status.json): {per_event_us:.0f} µs "
            f"(mean of {args.events})\n"
            f"- one {args.shape} checkpoint ({size_mb:.0f} MiB: weights + AdamW moments + RNG + state + tokenizer, "
            f"atomic with fsync): median {statistics.median(times):.2f} s of 3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
