"""`python -m engine RUN_DIR [--resume]`: what a detached run executes (see engine.runs.run_dir.launch_detached).

A preset whose world is larger than one process is handed to the torchrun supervisor (engine/runs/launch.py);
otherwise the stages run in this process.

Output goes to stdout, which the launcher points at RUN_DIR/train.log: one plain line per event, no
terminal control codes, so `tail -f train.log` and `minimind-studio logs` both read well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import load_preset
from engine.events import plain_log_listener
from engine.runs.launch import Supervisor, world_size
from engine.runs.pipeline import run_pipeline
from engine.runs.state import RunState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Run (or resume) a prepared run directory.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if world_size(load_preset(run_dir / "preset.toml")) > 1:
        state = Supervisor(run_dir).run(resume=args.resume)
        print(f"run {state}", flush=True)
        return 0 if state != RunState.FAILED else 1
    try:
        result = run_pipeline(run_dir, resume=args.resume, listeners=[plain_log_listener(sys.stdout)])
    except Exception as error:  # noqa: BLE001 - already recorded in status.json/events.jsonl; say it once here
        print(f"run failed: {type(error).__name__}: {error}", flush=True)
        return 1
    print(f"run {result.state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
