"""Generation speed: 256 new tokens with the KV cache, without it, and HF generate() on the export.

    python -m bench.generate [--shape minimind-26m] [--new-tokens 256] [--repeats 3] [--no-publish]

All three start from the same random-initialised weights and prompt and decode greedily (same
sampling); HF's model is the engine's export loaded with AutoModelForCausalLM, and the engine's tokens
must equal HF's. The cached engine and HF run --repeats times, alternating, and each keeps its best
time (a shared machine only ever slows a run down); the slow no-cache variant runs once. Results are
appended to bench/RESULTS.md unless --no-publish (a development run: print only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from bench.train import ROOT, SHAPES, publish

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, what fn returned)."""
    start = time.perf_counter()
    produced = fn()
    return time.perf_counter() - start, produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="minimind-26m", choices=sorted(SHAPES))
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, choices=range(1, 101), metavar="N",
                        help="runs of the cached engine and of HF; the best counts (1-100)")
    parser.add_argument("--no-publish", action="store_true", help="print the table, do not append it to bench/RESULTS.md")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from engine.checkpoints.checkpoint import model_tensors, read_checkpoint, save_checkpoint
    from engine.checkpoints.hf_export import export_hf
    from engine.config import load_preset
    from engine.data.tokenizer import train_tokenizer
    from engine.model.generate import Sampling, generate
    from engine.model.transformer import CausalLM

    config = load_preset(ROOT / SHAPES[args.shape][0]).model
    torch.manual_seed(0)
    model = CausalLM(config).eval()
    prompt = torch.randint(3, config.vocab_size, (args.prompt_tokens,)).tolist()
    greedy = Sampling(temperature=0.0, max_new_tokens=args.new_tokens)
    n = args.new_tokens

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        train_tokenizer(ROOT / "dataset" / "pretrain.jsonl", tmp_path / "tok", min(config.vocab_size, 2000), heldout_lines=0)
        ckpt = save_checkpoint(tmp_path / "ckpt", model_state=model_tensors(model), optimizer_state=None,
                               state={"stage": "pretrain", "step": 0, "model": config.model_dump(mode="json")},
                               tokenizer_dir=tmp_path / "tok", keep=1)
        hf = AutoModelForCausalLM.from_pretrained(export_hf(read_checkpoint(ckpt), tmp_path / "hf")).eval()

        # No stop tokens: every variant produces exactly n tokens.
        ids = torch.tensor([prompt])

        def engine_cached() -> list[int]:
            return list(generate(model, prompt, greedy, use_cache=True))

        def hf_generate() -> list[int]:
            with torch.no_grad():
                return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()

        list(generate(model, prompt, Sampling(temperature=0.0, max_new_tokens=8)))  # warm-up
        with torch.no_grad():
            hf.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)  # warm-up
        cached_s = hf_s = float("inf")
        for _ in range(args.repeats):
            seconds, engine_tokens = timed(engine_cached)
            cached_s = min(cached_s, seconds)
            seconds, hf_tokens = timed(hf_generate)
            hf_s = min(hf_s, seconds)
        plain_s, _ = timed(lambda: len(list(generate(model, prompt, greedy, use_cache=False))))

    rows = [("engine, KV cache", n / cached_s), ("engine, no cache", n / plain_s), ("HF generate() on the export", n / hf_s)]
    same = "equal" if engine_tokens == hf_tokens else "DIFFER FROM"
    lines = [(f"{args.shape} shape, {args.prompt_tokens}-token prompt, {n} new tokens, greedy, batch 1, CPU float32, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} (no cache: 1 run). "
              f"Engine tokens {same} HF's.\n"),
             "| variant | tokens/s | vs HF |", "|---|---:|---:|"]
    lines += [f"| {name} | {rate:,.1f} | {rate / rows[2][1]:.2f}x |" for name, rate in rows]
    publish("Generation", "\n".join(lines), print_only=args.no_publish)
    return 0


if __name__ == "__main__":
    sys.exit(main())
