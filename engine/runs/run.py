"""`Run`: the one owner of a run directory's life, and the only writer of its status.json.

A run goes through these states (engine.runs.state), each change a named transition of `Run`:

    create ──> queued ──start──> running ──stopping──> stopping
                 ^                  │                     │
       reserve / claim / restart    ├──finish──> finished <┤
                 │                  ├──stop────> stopped  <┤
      stopped | failed | crashed    └──fail────> failed   <┘
      | finished (resumable)

`reserve` (a resume is about to launch a process), `claim` (the process that now holds the run lock takes
the run over, from whatever state it was left in: its pid is recorded) and `restart` (the torchrun
supervisor relaunches after a failure) lead back to queued; `start`
is the run process beginning its stages. A transition from a state the table does not allow is a
RunStateError: a bug, or a hand-edited status.json, never silently written. Crashed is only ever read
(engine.runs.liveness): status.json says queued/running/stopping but nobody is there.

Beside the transitions, `Run` holds what a run's process needs for its life: the frozen preset, parsed
once; the run lock; the heartbeat; the stop flag (control/stop and signals); and progress updates
(stage, step, loss) that are not state changes. The run-directory contract (docs/run-directory.md)
is unchanged: these are the same files and fields as always.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.atomic import write_json_atomic, write_text_atomic
from engine.config import Preset, load_preset, preset_to_toml, save_preset
from engine.disk_full import keep_reserve, release_reserve
from engine.errors import ResourceError, RunBusy, RunStateError
from engine.locks import FileLock, split_holder
from engine.runs.liveness import HEARTBEAT_S, effective_state, process_start_time
from engine.runs.state import RunState

_S = RunState
_RESUMABLE = frozenset({_S.STOPPED, _S.FINISHED, _S.FAILED, _S.CRASHED, _S.UNKNOWN})

# transition -> (the states it may leave, the state it enters)
TRANSITIONS: dict[str, tuple[frozenset[RunState], RunState]] = {
    "reserve": (_RESUMABLE, _S.QUEUED),
    # Only the holder of the run lock claims, and a live run process holds that lock for its whole life: whatever
    # status.json says (a "running" left by a process that died of a second Ctrl-C, say), nobody else runs it.
    "claim": (frozenset(_S), _S.QUEUED),
    "start": (frozenset({_S.QUEUED}), _S.RUNNING),
    "stopping": (frozenset({_S.RUNNING}), _S.STOPPING),
    "finish": (frozenset({_S.RUNNING, _S.STOPPING}), _S.FINISHED),
    "stop": (frozenset({_S.QUEUED, _S.RUNNING, _S.STOPPING}), _S.STOPPED),
    # failed again: a later, fuller reason (the supervisor naming a rank after rank 0 wrote its own line)
    "fail": (frozenset({_S.QUEUED, _S.RUNNING, _S.STOPPING, _S.FAILED}), _S.FAILED),
    "restart": (frozenset({_S.QUEUED, _S.RUNNING, _S.STOPPING, _S.FAILED}), _S.QUEUED),
}
# Transitions taken from outside a live process judge the state as readers do (a dead "running" is crashed);
# the others are taken by the run's own process, which knows its recorded state is its own.
_FROM_OUTSIDE = frozenset({"reserve", "claim"})
# Fields a progress update may carry: what the runs table and the monitor show between state changes.
PROGRESS_FIELDS = frozenset({"stage", "step", "total_steps", "loss", "tokens_per_s", "eta_s", "stages_done",
                             "world_size", "strategy", "node_rank", "resumed", "restarts"})

_status_lock = threading.Lock()  # the heartbeat thread and the training loop both update status.json


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json as a dict ({} when missing or torn by a hand edit)."""
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class Run:
    """One run directory. Cheap to make: nothing is read until asked for."""

    def __init__(self, run_dir: Path, preset: Preset | None = None) -> None:
        self.dir = Path(run_dir)
        self._preset = preset

    @classmethod
    def create(cls, frozen: Preset, run_dir: Path) -> Run:
        """Write a fresh directory (which the caller has just made, atomically) holding the frozen preset: queued."""
        (run_dir / "control").mkdir()
        write_text_atomic(run_dir / "preset.toml", preset_to_toml(frozen))
        run = cls(run_dir, frozen)
        run._write({"state": _S.QUEUED, "preset": frozen.name, "stage": None, "step": 0, "total_steps": 0}, fresh=True)
        return run

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def preset(self) -> Preset:
        """The frozen preset, parsed once for the life of this object."""
        if self._preset is None:
            self._preset = load_preset(self.dir / "preset.toml")
        return self._preset

    def replace_preset(self, preset: Preset) -> None:
        """Write a changed frozen preset (resuming on another number of processes changes [distributed])."""
        save_preset(preset, self.dir / "preset.toml")
        self._preset = preset

    # --- reading ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return read_status(self.dir)

    @property
    def state(self) -> RunState:
        """The state as readers see it (a dead process's live state is crashed)."""
        return effective_state(self.status())

    # --- the state machine --------------------------------------------------------------------------

    def reserve(self) -> None:
        """Claim a stopped, failed or crashed run for one resume, under the launch lock: RunBusy if it is live or
        already reserved. The stop request that ended its last session is spent here, so a stop given while the
        new process starts up is obeyed, not erased."""
        with self.lock("launch"):
            self.refuse_live("resumed")
            (self.dir / "control" / "stop").unlink(missing_ok=True)
            # No pid start time: until a process claims it, a queued run is judged by the age of its heartbeat.
            self._transition("reserve", exit_reason=None, pid=os.getpid(), pid_started_at=None)

    def claim(self, **fields: Any) -> None:
        """This process takes the run over (its pid, host and start time are recorded); the state is queued until
        `start`. Called by the process that holds the run lock for the run's life.

        A run not reserved first (resumed by `python -m engine RUN --resume` itself) still holds the stop request
        that ended its last session: it is spent here. A reserved run's was spent by `reserve`, so a stop found
        now was given while this process started up, and is obeyed."""
        if RunState.parse(self.status().get("state")) != _S.QUEUED:
            self.spend_stop()
        self._transition("claim", pid=os.getpid(), pid_started_at=process_start_time(os.getpid()),
                         host=socket.gethostname(), exit_reason=None, **fields)

    def start(self, **fields: Any) -> None:
        self._transition("start", exit_reason=None, **fields)

    def begin_stopping(self) -> None:
        self._transition("stopping")

    def finish(self, reason: str = "all stages done") -> None:
        self._transition("finish", exit_reason=reason)

    def stopped(self, reason: str) -> None:
        self._transition("stop", exit_reason=reason)

    def fail(self, reason: str) -> None:
        self._transition("fail", exit_reason=reason)

    def restart(self, attempt: int) -> None:
        self._transition("restart", exit_reason=None, restarts=attempt)

    def end(self, state: RunState, reason: str) -> None:
        """The terminal transition that `state` names (how a pipeline or a node's processes ended)."""
        {_S.FINISHED: self.finish, _S.STOPPED: self.stopped, _S.FAILED: self.fail}[state](reason)

    def record(self, **fields: Any) -> None:
        """Progress that is not a state change (stage, step, loss ...); also refreshes the heartbeat."""
        unknown = set(fields) - PROGRESS_FIELDS
        if unknown:
            raise RunStateError(f"run {self.name}: {sorted(unknown)} are not progress fields of status.json")
        self._write(fields)

    def beat(self) -> None:
        self._write({})

    def _transition(self, name: str, **fields: Any) -> None:
        allowed, target = TRANSITIONS[name]
        with self._status_locked():
            status = read_status(self.dir)
            current = effective_state(status) if name in _FROM_OUTSIDE else RunState.parse(status.get("state"))
            if current not in allowed:
                raise RunStateError(
                    f"run {self.name}: cannot {name} a run that is {current} (status.json in {self.dir}); "
                    f"{name} leaves only {', '.join(sorted(allowed))}. If status.json was edited by hand, restore it "
                    f"or delete the run")
            self._replace(status, {**fields, "state": target})

    def _write(self, fields: dict[str, Any], fresh: bool = False) -> None:
        with self._status_locked():
            self._replace({} if fresh else read_status(self.dir), fields)

    def _replace(self, status: dict[str, Any], fields: dict[str, Any]) -> None:
        if not status:
            status = {"run_id": self.name, "pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
        status.update(fields)
        status["heartbeat_at"] = time.time()
        write_json_atomic(self.dir / "status.json", status)

    @contextmanager
    def _status_locked(self) -> Iterator[None]:
        """One read-modify-replace of status.json at a time, across threads and processes: a run of several
        processes has its supervisor's heartbeat and rank 0 writing it, and a heartbeat that read the file just
        before rank 0 wrote `finished` must not put the old state back. An flock on a sidecar file that is never
        written to (so it needs no space on a full disk once it exists)."""
        with _status_lock:
            fd = os.open(self.dir / ".status.lock", os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing drops the flock

    # --- refusals, written once for the CLI and the studio -------------------------------------------

    def refuse_live(self, doing: str) -> None:
        """RunBusy, with what to do instead, if a process runs this run or is starting it."""
        status = self.status()
        state = effective_state(status)
        if state == _S.QUEUED:
            raise RunBusy(f"run {self.name} is starting (queued by another command); it cannot be {doing} now. "
                          f"Watch it with: minimind-studio logs -f {self.name}")
        if state.live:
            raise RunBusy(f"run {self.name} is {state} (pid {status.get('pid', '?')}); stop it first with: "
                          f"minimind-studio stop {self.name}")

    # --- what a run's process holds for its life ------------------------------------------------------

    def lock(self, purpose: str = "run") -> RunLock:
        return RunLock(self.dir, purpose)

    def heartbeat(self, interval: float = HEARTBEAT_S) -> Heartbeat:
        return Heartbeat(self, interval)

    def stop_flag(self, writes_status: bool = True) -> StopFlag:
        return StopFlag(self, writes_status)

    def stop_requested(self) -> bool:
        return (self.dir / "control" / "stop").exists()

    def request_stop(self) -> None:
        """Ask the run to checkpoint and exit (control/stop: every rank reads its own node's)."""
        (self.dir / "control").mkdir(exist_ok=True)
        (self.dir / "control" / "stop").touch()

    def spend_stop(self) -> None:
        (self.dir / "control" / "stop").unlink(missing_ok=True)


class RunLock:
    """An exclusive flock on run_dir/lock (engine.locks) held for the life of the run process, and
    for a moment by whoever launches or deletes the run, so those three never overlap.

    The kernel drops an flock when its process dies, however it dies, so a lock is never stale; what
    the file says (pid, purpose) is only for the message.
    """

    def __init__(self, run_dir: Path, purpose: str = "run") -> None:
        self.path = run_dir / "lock"
        self._lock = FileLock(self.path, purpose)

    def acquire(self) -> RunLock:
        name = self.path.parent.name
        try:
            taken = self._lock.acquire()
        except FileNotFoundError:
            raise ResourceError(f"run {name} no longer exists in {self.path.parent.parent}: it was deleted or moved. "
                                "`minimind-studio runs` lists the runs there are") from None
        if not taken:
            pid, purpose = split_holder(self._lock.holder)
            if purpose == "delete":
                raise RunBusy(f"run {name} is being deleted (pid {pid}); it cannot be started or deleted again")
            if purpose == "launch":
                raise RunBusy(f"run {name} is being started by another command right now (pid {pid}); "
                              f"watch it with: minimind-studio logs -f {name}")
            raise RunBusy(f"run {name} is already running (pid {pid}); stop it first with: minimind-studio stop {name}")
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Heartbeat:
    """A daemon thread that refreshes heartbeat_at while long steps, evals or tokenizer training run.

    For as long, the run directory holds the session's disk reserve (engine.disk_full.keep_reserve): the
    room a run that fills its disk needs to still record why it failed (the pipeline releases it then)."""

    def __init__(self, run: Run, interval: float = HEARTBEAT_S) -> None:
        self.run, self.interval = run, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run.beat()
            except OSError:
                pass  # a full or vanished disk must not kill training from a side thread

    def __enter__(self) -> Heartbeat:
        keep_reserve(self.run.dir)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        release_reserve(self.run.dir)


class StopFlag:
    """Set by SIGTERM/SIGINT/SIGHUP or control/stop; the loop checkpoints and exits at the next step boundary.
    Called as `should_stop()`; the first time it says yes, the run (when this process writes status) is stopping."""

    def __init__(self, run: Run, writes_status: bool = True) -> None:
        self.run, self.writes_status = run, writes_status
        self.signalled: str | None = None
        self.announced = False

    def __call__(self) -> bool:
        stopping = self.signalled is not None or self.run.stop_requested()
        if stopping and not self.announced:
            self.announced = True
            if self.writes_status:
                self.run.begin_stopping()
        return stopping

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.signalled = signal.Signals(signum).name

    @property
    def reason(self) -> str:
        return f"stop requested ({self.signalled or 'control/stop'})"
