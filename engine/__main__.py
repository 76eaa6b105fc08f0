"""`python -m engine RUN_DIR [--resume]`: what a detached run executes (see engine.runs.run_dir.launch_detached).

Output goes to stdout, which the launcher points at RUN_DIR/train.log: one plain line per event, no
terminal control codes, so `tail -f train.log` and `minimind-studio logs` both read well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.events import plain_log_listener
from engine.runs.pipeline import run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Run (or resume) a prepared run directory.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = run_pipeline(args.run_dir.resolve(), resume=args.resume, listeners=[plain_log_listener(sys.stdout)])
    except Exception as error:  # noqa: BLE001 - already recorded in status.json/events.jsonl; say it once here
        print(f"run failed: {type(error).__name__}: {error}", flush=True)
        return 1
    print(f"run {result.state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
