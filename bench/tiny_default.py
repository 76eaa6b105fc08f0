"""The built-in default, end to end: training time and held-out exact match of presets/tiny.toml,
as shipped and with overrides, each a real `minimind-studio run` in a fresh directory.

    python -m bench.tiny_default [--variant "sft.max_steps=100 sft.learning_rate=2e-3"] ... [--no-publish]

A variant is a space-separated list of --set overrides; "" is the preset as shipped. Each run's
training seconds come from its stage_end events (what the README's "about three minutes" means),
the wall time includes start-up, the tokenizer and the held-out scoring.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.train import ROOT, publish


def run_variant(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="tiny-default-") as work:
        command = [sys.executable, "-m", "studio.cli", "run", str(ROOT / "presets" / "tiny.toml")]
        for item in overrides:
            command += ["--set", item]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=work, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(overrides) or 'as shipped'} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        (run_dir,) = (Path(work) / "runs").glob("*-tiny")
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        by_kind = json.loads((run_dir / "heldout_sft.json").read_text())["by_kind"]
    ends = {e["stage"]: e for e in events if e["kind"] == "stage_end"}
    starts = {e["stage"]: e for e in events if e["kind"] == "stage_start"}
    heldout = [e for e in events if e["kind"] == "eval" and e.get("heldout_total")][-1]
    return {
        "overrides": overrides, "wall_s": wall,
        "pretrain_s": ends["pretrain"]["seconds"], "sft_s": ends["sft"]["seconds"],
        "train_s": ends["pretrain"]["seconds"] + ends["sft"]["seconds"],
        "by_kind": {kind: f"{v['correct']}/{v['total']}" for kind, v in by_kind.items()},
        "accuracy": heldout["heldout_accuracy"], "correct": heldout["heldout_correct"], "total": heldout["heldout_total"],
        "dtype": starts["pretrain"].get("dtype"), "attention": starts["pretrain"].get("attention"),
        "compile": starts["pretrain"].get("compile_mode"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=None,
                        help='space-separated --set overrides; "" (the default) is the preset as shipped')
    parser.add_argument("--no-publish", action="store_true")
    args = parser.parse_args()
    variants = args.variant if args.variant is not None else [""]
    rows = []
    for variant in variants:
        result = run_variant(variant.split())
        rows.append(result)
        print(json.dumps(result), flush=True)
    from engine.hardware.cpu import describe_cpu

    lines = ["| overrides | dtype | attention | compile | pretrain s | sft s | training s | wall s | held-out exact match | by kind |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {' '.join(r['overrides']) or 'as shipped'} | {r['dtype']} | {r['attention']} | {r['compile']} | "
                     f"{r['pretrain_s']:.1f} | {r['sft_s']:.1f} | {r['train_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['accuracy']:.1%} ({r['correct']}/{r['total']}) | "
                     f"{', '.join(f'{k} {v}' for k, v in r['by_kind'].items())} |")
    publish(f"The tiny default on {describe_cpu()}",
            "`minimind-studio run presets/tiny.toml` in a fresh directory per row (tokenizer, pretrain, SFT, held-out "
            "scoring); training seconds from the stage_end events, wall time includes start-up and scoring.\n\n"
            + "\n".join(lines), print_only=args.no_publish)
    return 0


if __name__ == "__main__":
    sys.exit(main())
