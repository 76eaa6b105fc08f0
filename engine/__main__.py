"""`python -m engine RUN_DIR [--resume] [--rank]`: the process a detached run executes (engine.runs.execute.start_detached),
and, with --rank, what torchrun starts on every rank of a several-process run.

Output goes to stdout, which the launcher points at RUN_DIR/train.log: one plain line per event, no
terminal control codes, so `tail -f train.log` and `minimind-studio logs` both read well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.runs.execute import execute, execute_rank
from engine.runs.run import Run
from engine.runs.state import RunState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Run (or resume) a prepared run directory.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--rank", action="store_true", help="one rank of a torchrun job (torchrun passes it)")
    args = parser.parse_args(argv)
    run = Run(args.run_dir.resolve())
    if args.rank:
        execute_rank(run, resume=args.resume)  # a failing rank raises: torchrun and the supervisor report it
        return 0
    try:
        state = execute(run, resume=args.resume, log=sys.stdout)
    except Exception as error:  # noqa: BLE001 - already recorded in status.json/events.jsonl; say it once here
        print(f"run failed: {type(error).__name__}: {error}", flush=True)
        return 1
    print(f"run {state}", flush=True)
    return 0 if state != RunState.FAILED else 1


if __name__ == "__main__":
    sys.exit(main())
