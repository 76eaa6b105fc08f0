"""Is a run's process alive? The one reading of it, for the engine, the CLI and the studio.

A run records its pid, host and the pid's start time in status.json. Readers on the same host ask the
kernel about that pid; a run on another host sharing the disk can only be judged by its heartbeat.

Two ways a dead process can look alive, both caught here:
- a zombie: a process that died but that its parent has not reaped yet still has a pid and a start time.
  In a container whose PID 1 never reaps orphans (`sleep infinity`, `tail -f /dev/null`: common on GPU
  boxes) a detached run killed with SIGKILL stays a zombie for ever, and a run read as live by it could
  never be resumed, stopped or deleted;
- pid reuse: after a reboot or a long time the pid may belong to another process; its start time differs.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from engine.runs.state import RunState

# A live run refreshes heartbeat_at every HEARTBEAT_S; readers call it crashed when the process is gone
# (same host) or, for a run on another host sharing the disk, when the heartbeat is older than STALE_S.
HEARTBEAT_S = 5.0
STALE_S = 60.0


def process_start_time(pid: int) -> float | None:
    """When the process `pid` started (seconds since the epoch), None when there is no such living process:
    a zombie counts as dead (it has finished running; only its exit status waits to be collected)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def process_alive(status: dict[str, Any]) -> bool:
    """Is the process status.json records alive? pid reuse is caught by comparing start times."""
    started = process_start_time(int(status.get("pid", -1))) if status.get("pid") else None
    if started is None:
        return False
    recorded = status.get("pid_started_at")
    return recorded is None or abs(started - recorded) < 1.0


def effective_state(status: dict[str, Any], now: float | None = None) -> RunState:
    """The state to show: a live state whose process died without saying so (kill -9, reboot) is CRASHED."""
    state = RunState.parse(status.get("state"))
    if not state.live:
        return state
    age = (now or time.time()) - status.get("heartbeat_at", 0)
    same_host = status.get("host") == socket.gethostname()
    # A queued run whose process has not claimed it yet records no pid start time (the pid is the launcher's,
    # which may have exited already): only its age can tell. Once claimed, its pid is asked like a running one's.
    claimed = status.get("pid_started_at") is not None
    if same_host and (state != RunState.QUEUED or claimed):
        return state if process_alive(status) else RunState.CRASHED
    return state if age < STALE_S else RunState.CRASHED
