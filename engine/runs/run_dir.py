"""The run directory: the only interface between a run and whoever watches it.

    runs/<run-id>/
      preset.toml      frozen copy of what was launched (paths made absolute)
      status.json      replaced atomically on every change of state and at each heartbeat
      events.jsonl     append-only event stream (engine.events)
      train.log        the run's stdout/stderr when detached
      control/stop     created by a user; the run checkpoints and exits cleanly
      tokenizer/       stage 1 output
      checkpoints/<stage>/step_NNNNNN/ and checkpoints/<stage>/latest
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.atomic import write_json_atomic, write_text_atomic
from engine.config import Preset, output_path, preset_to_toml, resolve_path
from engine.disk_full import keep_reserve, release_reserve
from engine.errors import ResourceError
from engine.locks import FileLock, split_holder
from engine.runs.state import RunState

# A live run refreshes heartbeat_at every HEARTBEAT_S; readers call it crashed when the process is gone
# (same host) or, for a run on another host sharing the disk, when the heartbeat is older than STALE_S.
HEARTBEAT_S = 5.0
STALE_S = 60.0
_status_lock = threading.Lock()  # the heartbeat thread and the training loop both update status.json


def new_run_id(name: str, out_dir: Path, now: datetime | None = None) -> str:
    """<UTC yyyymmdd-HHMMSS>-<name>, with -2, -3 ... when a run of that second already exists."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{name}"
    run_id, n = base, 1
    while (out_dir / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def freeze_paths(preset: Preset) -> Preset:
    """Make every data/weight path absolute so the frozen preset works from any directory later."""
    frozen = preset.model_copy(deep=True)
    frozen.out_dir = str(output_path(preset.out_dir))
    frozen.runtime.cache_dir = str(output_path(preset.runtime.cache_dir))
    frozen.tokenizer.data_path = str(resolve_path(preset.tokenizer.data_path))
    if preset.tokenizer.from_dir:
        frozen.tokenizer.from_dir = str(resolve_path(preset.tokenizer.from_dir))
    if preset.tracking.swanlab.logdir:
        frozen.tracking.swanlab.logdir = str(output_path(preset.tracking.swanlab.logdir))
    for stage in ("pretrain", "sft"):
        section = frozen.stage(stage)
        section.data_path = str(resolve_path(section.data_path))
        if section.heldout_path:
            section.heldout_path = str(resolve_path(section.heldout_path))
        if section.from_weight and section.from_weight != "latest":
            section.from_weight = str(resolve_path(section.from_weight))
    return frozen


def create_run(preset: Preset) -> Path:
    """Make a fresh run directory holding the frozen preset; returns its path."""
    frozen = freeze_paths(preset)
    out_dir = Path(frozen.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    while True:
        run_dir = out_dir / new_run_id(frozen.name, out_dir)
        try:
            run_dir.mkdir()  # atomic: two launches racing for the same id cannot both win
            break
        except FileExistsError:
            continue
    (run_dir / "control").mkdir()
    write_text_atomic(run_dir / "preset.toml", preset_to_toml(frozen))
    write_status(run_dir, state=RunState.QUEUED, preset=frozen.name, stage=None, step=0, total_steps=0)
    return run_dir


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@contextmanager
def _status_update(run_dir: Path) -> Iterator[None]:
    """One read-modify-replace of status.json at a time, across threads and processes: a run of several
    processes has its supervisor's heartbeat and rank 0 writing it, and a heartbeat that read the file just
    before rank 0 wrote `finished` must not put the old state back. An flock on a sidecar file that is never
    written to (so it needs no space on a full disk once it exists)."""
    with _status_lock:
        fd = os.open(run_dir / ".status.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into status.json (atomic replace) and stamp the heartbeat."""
    with _status_update(run_dir):
        status = read_status(run_dir)
        if not status:
            status = {"run_id": run_dir.name, "pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
        status.update(fields)
        status["heartbeat_at"] = time.time()
        write_json_atomic(run_dir / "status.json", status)
        return status


def claim_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """The run process takes over status.json: its own pid, host and process start time."""
    return write_status(run_dir, pid=os.getpid(), pid_started_at=process_start_time(os.getpid()),
                        host=socket.gethostname(), **fields)


def process_start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_alive(status: dict[str, Any]) -> bool:
    """Is the process recorded in status alive? pid reuse is caught by comparing start times."""
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
    if state == RunState.QUEUED:  # the launcher's pid is recorded until the run process claims the status
        return state if age < STALE_S else RunState.CRASHED
    if status.get("host") == socket.gethostname():
        return state if process_alive(status) else RunState.CRASHED
    return state if age < STALE_S else RunState.CRASHED


class RunBusy(ResourceError):
    """The run directory is locked by a live process."""


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

    def __init__(self, run_dir: Path, interval: float = HEARTBEAT_S) -> None:
        self.run_dir, self.interval = run_dir, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                write_status(self.run_dir)
            except OSError:
                pass  # a full or vanished disk must not kill training from a side thread

    def __enter__(self) -> Heartbeat:
        keep_reserve(self.run_dir)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        release_reserve(self.run_dir)


def engine_env() -> dict[str, str]:
    """The environment of a process that runs the engine (a detached run, torchrun's ranks): unbuffered output
    for train.log, and the project importable from any working directory."""
    from engine.config import PROJECT_ROOT

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def handling_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` for SIGTERM, SIGINT and SIGHUP while the block runs (the previous handlers after it). SIGHUP
    too: a foreground run whose SSH session drops checkpoints and stops instead of dying. Signals reach only
    the main thread, so elsewhere (a run started from a studio's worker) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def launch_detached(run_dir: Path, resume: bool = False) -> int:
    """Start the run in its own session (immune to the terminal's SIGHUP), stdin closed, output to
    train.log. Returns the pid at once."""
    env = engine_env()
    command = [sys.executable, "-m", "engine", str(run_dir)] + (["--resume"] if resume else [])
    with open(run_dir / "train.log", "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env, close_fds=True)
    return process.pid


def stop_requested(run_dir: Path) -> bool:
    return (run_dir / "control" / "stop").exists()


def request_stop(run_dir: Path) -> None:
    (run_dir / "control").mkdir(exist_ok=True)
    (run_dir / "control" / "stop").touch()


def list_runs(out_dir: str | Path = "runs") -> list[Path]:
    """Run directories under out_dir, oldest first (ids sort by time)."""
    root = output_path(out_dir)
    if not root.is_dir():
        return []
    # Hidden folders are not runs: a run being deleted is renamed to one first (engine.runs.manage).
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "preset.toml").is_file())


def preset_name_of(run_dir: Path) -> str:
    from engine.config import load_preset

    return read_status(run_dir).get("preset") or load_preset(run_dir / "preset.toml").name


def latest_run_of(preset_name: str, out_dir: str | Path = "runs") -> Path | None:
    return next((r for r in reversed(list_runs(out_dir)) if preset_name_of(r) == preset_name), None)


def find_run(spec: str, out_dir: str | Path = "runs") -> Path:
    """A run from a path, an id, or a unique prefix/suffix of an id under out_dir."""
    path = resolve_path(spec)
    if (path / "preset.toml").is_file():
        return path
    runs = list_runs(out_dir)
    matches = [r for r in runs if r.name == spec] or [r for r in runs if r.name.startswith(spec) or r.name.endswith(spec)]
    if len(matches) == 1:
        return matches[0]
    where = output_path(out_dir)
    if not matches:
        raise ResourceError(f"no run {spec!r} under {where}; `minimind-studio runs` lists them")
    raise ResourceError(f"{spec!r} matches {len(matches)} runs under {where}: "
                        f"{', '.join(m.name for m in matches[:5])}; give more of the id")


@dataclass(frozen=True)
class RunSummary:
    """One row of `minimind-studio runs` and of the studio's runs table."""

    run_dir: Path
    preset: str
    state: RunState
    stage: str | None
    step: int
    total_steps: int
    loss: float | None
    tokens_per_s: float | None
    started_at: float | None
    heartbeat_at: float | None
    exit_reason: str | None

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def live(self) -> bool:
        """A process may still be writing this run (a crashed one is not live)."""
        return self.state.live


def summarize(run_dir: Path) -> RunSummary:
    status = read_status(run_dir)
    return RunSummary(
        run_dir=run_dir, preset=preset_name_of(run_dir),
        state=effective_state(status), stage=status.get("stage"), step=status.get("step", 0),
        total_steps=status.get("total_steps", 0), loss=status.get("loss"), tokens_per_s=status.get("tokens_per_s"),
        started_at=status.get("started_at"), heartbeat_at=status.get("heartbeat_at"), exit_reason=status.get("exit_reason"),
    )
