"""GGUF export size and time on the minimind-26m shape, per dtype.

    python -m bench.gguf_export [--shape minimind-26m] [--repeats 3] [--no-publish]

A randomly initialised model of the preset's shape (export cost does not depend on what the weights
learned) is saved as a normal checkpoint with a BPE tokenizer trained on the built-in corpus (2,000 ids,
so the model's 6,400 are partly padding, as in the tiny preset), then exported once per dtype and
repeat. Time is the whole `export_gguf` call (tokenizer load, weights read, Q/K permutation,
quantization, fsync'd atomic write); the best of --repeats counts, since a shared machine only slows
a run down. Results are appended to bench/RESULTS.md unless --no-publish.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from bench.train import ROOT, SHAPES, publish


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="minimind-26m", choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=3, choices=range(1, 21), metavar="N", help="exports per dtype (1-20)")
    parser.add_argument("--no-publish", action="store_true", help="print the table, do not append it to bench/RESULTS.md")
    args = parser.parse_args()

    import torch

    from engine.checkpoints.checkpoint import model_tensors, read_checkpoint, save_checkpoint
    from engine.checkpoints.gguf_export import GGUF_DTYPES, Q8_0, export_gguf, storage_type
    from engine.config import load_preset
    from engine.data.tokenizer import train_tokenizer
    from engine.model.transformer import CausalLM

    config = load_preset(ROOT / SHAPES[args.shape][0]).model
    torch.manual_seed(0)
    model = CausalLM(config)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        train_tokenizer(ROOT / "dataset" / "pretrain.jsonl", tmp_path / "tok", min(config.vocab_size, 2000), heldout_lines=0)
        saved = save_checkpoint(tmp_path / "ckpt", model_state=model_tensors(model), optimizer_state=None, keep=1,
                                tokenizer_dir=tmp_path / "tok",
                                state={"stage": "sft", "step": 0, "model": config.model_dump(mode="json")})
        ckpt = read_checkpoint(saved)
        weights_mib = (saved / "model.safetensors").stat().st_size / 2**20
        export_gguf(ckpt, tmp_path / "warm-up", "f32")  # imports and the first tokenizer load, once per process
        for dtype in GGUF_DTYPES:
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                path = export_gguf(ckpt, tmp_path / dtype, dtype)
                best = min(best, time.perf_counter() - start)
            rows.append((dtype, path.stat().st_size / 2**20, best))

    params = model.num_parameters()
    matrices = [tuple(t.shape) for t in model_tensors(model).values() if t.dim() == 2]  # a tied lm_head once
    fallback = sum(storage_type(shape, "q8_0") != Q8_0 for shape in matrices)
    lines = [(f"{args.shape} shape ({params / 1e6:.1f}M parameters, {'tied' if config.tie_word_embeddings else 'untied'} embeddings, "
              f"vocab {config.vocab_size}), random "
              f"weights; {cpu_model()}, {os.cpu_count()} cores; gguf {version('gguf')}, "
              f"torch {torch.__version__}; best of {args.repeats}. The checkpoint's float32 model.safetensors: "
              f"{weights_mib:.1f} MiB. q8_0 falls back to f16 for {fallback} of {len(matrices)} matrices (rows not a multiple of 32).\n"),
             "| dtype | file MiB | vs f32 | export s |", "|---|---:|---:|---:|"]
    lines += [f"| {dtype} | {mib:.1f} | {mib / rows[0][1]:.2f}x | {seconds:.2f} |" for dtype, mib, seconds in rows]
    publish("GGUF export", "\n".join(lines), print_only=args.no_publish)
    return 0


if __name__ == "__main__":
    sys.exit(main())
