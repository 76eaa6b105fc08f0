"""`python -m engine.runs.ranks RUN_DIR [--resume]`: what torchrun starts on every rank (engine/runs/launch.py).

Each rank joins the process group, runs the run's stages (rank 0 writes the run directory and prints
the plain log lines to train.log; the others follow silently) and leaves the group before exiting —
ranks that exit without `destroy_process_group()` intermittently abort at exit. `@record` writes a
failing rank's exception to torchrun's error file, where the supervisor finds the root cause.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from engine.config import load_preset
from engine.events import plain_log_listener
from engine.hardware.device import resolve_precision
from engine.runs.pipeline import run_rank
from engine.train.distributed import World


@record
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.runs.ranks", description="One rank of a torchrun job.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    preset = load_preset(run_dir / "preset.toml")
    device_type = resolve_precision(preset.runtime.device, preset.runtime.dtype).device.type
    world = World.from_env(device_type, preset.distributed.strategy, preset.distributed.timeout_s)
    listeners = [plain_log_listener(sys.stdout)] if world.is_main else []
    # A failing rank leaves the group as it dies: closing it first would make the others' errors ("connection
    # closed by peer") look older than this rank's own, which @record is about to write.
    result = run_rank(run_dir, preset, resume=args.resume, listeners=listeners, world=world)
    world.close()
    if world.is_main:
        print(f"run {result.state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
