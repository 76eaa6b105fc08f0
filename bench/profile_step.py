"""Where a training step's time goes, engine vs Hugging Face Llama, by kind of work (torch.profiler).

    python -m bench.profile_step [--shape minimind-26m] [--dtype bfloat16] [--no-publish]

Self CPU time of every op in two profiled steps (after two warm-up steps), summed into kinds: matmuls,
attention, the loss, casts/copies, elementwise, the optimizer. The engine's attention kernel is the
one training would choose on this machine. Written to bench/RESULTS.md with the CPU named.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from bench.train import ROOT, SHAPES, build, publish

# Op name fragments -> kind, first match wins (profiler names are "aten::mm", "aten::_softmax", ...).
KINDS = [
    ("loss", ("logsumexp", "log_softmax", "nll_loss", "amax", "exp", "scatter", "gather")),
    ("attention", ("scaled_dot_product", "softmax_backward", "_softmax", "masked_fill", "bmm")),
    ("matmul", ("aten::mm", "addmm", "aten::matmul")),
    ("casts/copies", ("copy_", "_to_copy", "clone", "contiguous")),
    ("optimizer", ("adam",)),
    ("elementwise", ("mul", "add", "sub", "div", "silu", "sigmoid", "pow", "rsqrt", "neg", "cat", "sum", "mean",
                     "fill_", "zero_", "where", "embedding", "index")),
]


def kind_of(name: str) -> str:
    for kind, fragments in KINDS:
        if any(fragment in name for fragment in fragments):
            return kind
    return "other"


def profile(impl: str, shape: str, dtype: str) -> tuple[dict[str, float], float, str | None]:
    """Milliseconds per step by kind, total ms per step, and the attention kernel (engine only)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from engine.config import load_preset
    from engine.hardware.tuning import TuningRecord
    from engine.train.step import set_training_kernel

    preset_path, batch, seq = SHAPES[shape]
    config = load_preset(ROOT / preset_path).model
    model = build(impl, config)
    model.train()
    kernel = None
    if impl == "engine":
        kernel, _ = set_training_kernel(model, "cpu", batch, seq, dtype, TuningRecord(None))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    tokens = torch.randint(3, config.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            if impl == "engine":
                loss = model(tokens[:, :-1], targets=tokens[:, 1:]).loss
            else:
                loss = model(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        by_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / 2  # ms per step
    return dict(by_kind), sum(by_kind.values()), kernel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="minimind-26m", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--no-publish", action="store_true")
    args = parser.parse_args()
    import torch

    from engine.hardware.cpu import describe_cpu

    results = {impl: profile(impl, args.shape, args.dtype) for impl in ("engine", "hf")}
    kinds = [kind for kind, _ in KINDS] + ["other"]
    _, batch, seq = SHAPES[args.shape]
    lines = ["| kind | engine ms/step | HF ms/step | engine / HF |", "|---|---:|---:|---:|"]
    for kind in kinds + ["total"]:
        mine = results["engine"][1] if kind == "total" else results["engine"][0].get(kind, 0.0)
        theirs = results["hf"][1] if kind == "total" else results["hf"][0].get(kind, 0.0)
        ratio = f"{mine / theirs:.2f}" if theirs else ""
        lines.append(f"| {kind} | {mine:,.0f} | {theirs:,.0f} | {ratio} |")
    publish(f"Where the step time goes on {describe_cpu()}",
            f"{args.shape} {batch}x{seq}, {args.dtype}, eager, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"self CPU time per step from torch.profiler (2 steps after 2 warm-up), grouped by op name; the engine's "
            f"attention kernel: {results['engine'][2]}.\n\n" + "\n".join(lines), print_only=args.no_publish)
    return 0


if __name__ == "__main__":
    sys.exit(main())
