"""What users do to a run from outside it: reserve it for a start, and delete it, safely while several
studios and shells act on one runs folder at once.

Both happen under the run's lock (engine.runs.run_dir.RunLock), the same lock the run process holds
for its whole life, so a start, a delete and a live run never overlap:

- `reserve_start` turns a resumable run into `queued` before its process is launched. A second start
  arriving between the launch and the moment the new process takes the lock (seconds: it imports
  torch) sees `queued` and is refused, instead of launching a twin that dies on the lock after both
  users were told "resuming".
- `delete_run` refuses a live or queued run, and renames the folder out of sight before removing it,
  so a start racing it either wins the lock first (the delete is refused) or finds no run at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.runs.run_dir import RunBusy, RunLock, effective_state, read_status, write_status
from engine.runs.state import RunState

TRASH_PREFIX = ".deleting-"  # runs/.deleting-<pid>-<run id>: a folder being removed; hidden from list_runs


def _refuse_live(run_dir: Path, doing: str) -> None:
    status = read_status(run_dir)
    state = effective_state(status)
    if state == RunState.QUEUED:
        raise RunBusy(f"run {run_dir.name} is starting (queued by another command); it cannot be {doing} now. "
                      f"Watch it with: minimind-studio logs -f {run_dir.name}")
    if state.live:
        raise RunBusy(f"run {run_dir.name} is {state} (pid {status.get('pid', '?')}); stop it first with: "
                      f"minimind-studio stop {run_dir.name}")


def reserve_start(run_dir: Path) -> None:
    """Claim a stopped, failed or crashed run for one resume: RunBusy if it is live or already reserved.

    The stop request that ended its last session is spent here, so a stop given while the new process
    starts up is obeyed, not erased (the pipeline spends a leftover stop only for a run not queued)."""
    with RunLock(run_dir, purpose="launch"):
        _refuse_live(run_dir, "resumed")
        (run_dir / "control" / "stop").unlink(missing_ok=True)
        write_status(run_dir, state=RunState.QUEUED, exit_reason=None)


def delete_run(run_dir: Path) -> None:
    """Remove a run directory with its checkpoints and logs; RunBusy if a process runs it or is starting it."""
    with RunLock(run_dir, purpose="delete"):
        _refuse_live(run_dir, "deleted")
        trash = run_dir.with_name(f"{TRASH_PREFIX}{os.getpid()}-{run_dir.name}")
        os.rename(run_dir, trash)  # one step: from here nobody finds the run, and its lock file has moved
    _remove_abandoned_trash(run_dir.parent)
    shutil.rmtree(trash)


def _remove_abandoned_trash(out_dir: Path) -> None:
    """Finish the deletes of processes that were killed half-way through removing a run (it can be gigabytes)."""
    import psutil

    for trash in out_dir.glob(f"{TRASH_PREFIX}*"):
        pid = trash.name.removeprefix(TRASH_PREFIX).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(trash, ignore_errors=True)
