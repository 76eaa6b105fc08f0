"""Generation speed: 256 new tokens with the KV cache, without it, and HF generate() on the export.

    python -m bench.generate [--shape minimind-26m] [--new-tokens 256]

All three start from the same random-initialised weights and prompt and decode greedily (same
sampling); HF's model is the engine's export loaded with AutoModelForCausalLM. Results are appended to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.train import ROOT, SHAPES, publish


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    produced = fn()
    return time.perf_counter() - start, produced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="minimind-26m", choices=sorted(SHAPES))
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from engine.checkpoint import read_checkpoint, save_checkpoint
    from engine.config import load_preset
    from engine.export import export_hf
    from engine.generate import Sampling, generate
    from engine.model import CausalLM
    from engine.tokenizer import train_tokenizer

    config = load_preset(ROOT / SHAPES[args.shape][0]).model
    torch.manual_seed(0)
    model = CausalLM(config).eval()
    prompt = torch.randint(3, config.vocab_size, (args.prompt_tokens,)).tolist()
    greedy = Sampling(temperature=0.0, max_new_tokens=args.new_tokens)
    n = args.new_tokens

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        train_tokenizer(ROOT / "dataset" / "pretrain.jsonl", tmp_path / "tok", min(config.vocab_size, 2000), heldout_lines=0)
        ckpt = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=None,
                               state={"stage": "pretrain", "step": 0, "model": config.model_dump(mode="json")},
                               tokenizer_dir=tmp_path / "tok", keep=1)
        hf = AutoModelForCausalLM.from_pretrained(export_hf(read_checkpoint(ckpt), tmp_path / "hf")).eval()

        # No stop tokens: every variant produces exactly n tokens.
        list(generate(model, prompt, Sampling(temperature=0.0, max_new_tokens=8)))  # warm-up
        cached_s, _ = timed(lambda: len(list(generate(model, prompt, greedy, use_cache=True))))
        plain_s, _ = timed(lambda: len(list(generate(model, prompt, greedy, use_cache=False))))
        ids = torch.tensor([prompt])
        with torch.no_grad():
            hf.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)  # warm-up
            hf_s, _ = timed(lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                eos_token_id=None, pad_token_id=0).shape[1])

    rows = [("engine, KV cache", n / cached_s), ("engine, no cache", n / plain_s), ("HF generate() on the export", n / hf_s)]
    lines = [f"{args.shape} shape, {args.prompt_tokens}-token prompt, {n} new tokens, greedy, batch 1, CPU float32, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads.\n",
             "| variant | tokens/s | vs HF |", "|---|---:|---:|"]
    lines += [f"| {name} | {rate:,.1f} | {rate / rows[2][1]:.2f}x |" for name, rate in rows]
    publish("Generation", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
