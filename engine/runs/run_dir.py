"""Run directories: making a fresh one, finding and listing them, and one summary row each. The run directory
is the only interface between a run and whoever watches it (docs/run-directory.md); its status.json belongs
to engine.runs.run.Run.

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

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.config import TRAIN_STAGES, Preset, output_path, resolve_path
from engine.errors import ResourceError
from engine.runs.liveness import effective_state, process_start_time
from engine.runs.run import Run, read_status
from engine.runs.state import RunState

__all__ = ["RunSummary", "create_run", "effective_state", "engine_env", "find_run", "handling_stop_signals",
           "latest_run_of", "list_runs", "new_run", "process_start_time", "read_status",
           "request_stop", "summarize"]


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
    for stage in TRAIN_STAGES:
        section = frozen.stage(stage)
        section.data_path = str(resolve_path(section.data_path))
        if section.heldout_path:
            section.heldout_path = str(resolve_path(section.heldout_path))
        if section.from_weight and section.from_weight != "latest":
            section.from_weight = str(resolve_path(section.from_weight))
    return frozen


def create_run(preset: Preset) -> Path:
    """Make a fresh run directory holding the frozen preset (queued); returns its path."""
    return new_run(preset).dir


def new_run(preset: Preset) -> Run:
    """Make a fresh run directory holding the frozen preset (queued); the Run carries the frozen preset."""
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
    return Run.create(frozen, run_dir)


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


def request_stop(run_dir: Path) -> None:
    Run(run_dir).request_stop()


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
