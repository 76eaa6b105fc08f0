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

import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.atomic import write_json_atomic, write_text_atomic
from engine.config import Preset, preset_to_toml, resolve_path

RUN_STATES = ("queued", "running", "stopping", "stopped", "finished", "failed")


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
    frozen.out_dir = str(resolve_path(preset.out_dir))
    frozen.runtime.cache_dir = str(resolve_path(preset.runtime.cache_dir))
    frozen.tokenizer.data_path = str(resolve_path(preset.tokenizer.data_path))
    if preset.tokenizer.from_dir:
        frozen.tokenizer.from_dir = str(resolve_path(preset.tokenizer.from_dir))
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
    write_status(run_dir, state="queued", stage=None, step=0, total_steps=0)
    return run_dir


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into status.json (atomic replace) and stamp the heartbeat."""
    status = read_status(run_dir)
    if not status:
        status = {"run_id": run_dir.name, "pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
    status.update(fields)
    status["heartbeat_at"] = time.time()
    write_json_atomic(run_dir / "status.json", status)
    return status


def stop_requested(run_dir: Path) -> bool:
    return (run_dir / "control" / "stop").exists()


def request_stop(run_dir: Path) -> None:
    (run_dir / "control").mkdir(exist_ok=True)
    (run_dir / "control" / "stop").touch()


def list_runs(out_dir: str | Path = "runs") -> list[Path]:
    """Run directories under out_dir, oldest first (ids sort by time)."""
    root = resolve_path(out_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "preset.toml").is_file())


def latest_run_of(preset_name: str, out_dir: str | Path = "runs") -> Path | None:
    from engine.config import load_preset

    for run_dir in reversed(list_runs(out_dir)):
        if load_preset(run_dir / "preset.toml").name == preset_name:
            return run_dir
    return None
