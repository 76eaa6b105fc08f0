"""Deleting a run, safely while several studios and shells act on one runs folder at once.

A delete happens under the run's lock (engine.runs.run.RunLock), the same lock the run process holds for its
whole life and a resume's reservation (`Run.reserve`) holds for a moment, so a start, a delete and a live run
never overlap. (A reservation turns a resumable run into `queued` before its process is launched: a second
start arriving before the new process takes the lock — seconds: it imports torch — sees `queued` and is
refused, instead of launching a twin that dies on the lock after both users were told "resuming".)

- `delete_run` refuses a live or queued run, and renames the folder out of sight before removing it,
  so a start racing it either wins the lock first (the delete is refused) or finds no run at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.runs.liveness import process_start_time
from engine.runs.run import Run

TRASH_PREFIX = ".deleting-"  # runs/.deleting-<pid>-<run id>: a folder being removed; hidden from list_runs


def delete_run(run_dir: Path) -> None:
    """Remove a run directory with its checkpoints and logs; RunBusy if a process runs it or is starting it."""
    run = Run(run_dir)
    with run.lock("delete"):
        run.refuse_live("deleted")
        trash = run_dir.with_name(f"{TRASH_PREFIX}{os.getpid()}-{run_dir.name}")
        os.rename(run_dir, trash)  # one step: from here nobody finds the run, and its lock file has moved
    _remove_abandoned_trash(run_dir.parent)
    shutil.rmtree(trash)


def _remove_abandoned_trash(out_dir: Path) -> None:
    """Finish the deletes of processes that were killed half-way through removing a run (it can be gigabytes)."""
    for trash in out_dir.glob(f"{TRASH_PREFIX}*"):
        pid = trash.name.removeprefix(TRASH_PREFIX).split("-", 1)[0]
        # A killed deleter that nobody reaped is a zombie: dead, though its pid still exists (engine.runs.liveness).
        if pid.isdigit() and int(pid) != os.getpid() and process_start_time(int(pid)) is None:
            shutil.rmtree(trash, ignore_errors=True)
