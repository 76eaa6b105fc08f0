"""Run directories and event lines written by hand, as the engine would leave them (no training)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from engine.config import preset_from_dict, preset_to_toml

T0 = 1_700_000_000.0  # a fixed "now" so ages and clocks in the UI are deterministic
DEAD_PID = 4_000_000  # above the default pid_max: never a live process


def step_fields(stage: str, step: int, total: int, loss: float, **extra: Any) -> dict[str, Any]:
    """The fields of a `step` event (what EventLog.emit("step", ...) takes), plausible values."""
    fields = {"stage": stage, "step": step, "total_steps": total, "loss": loss, "lr": 1e-3 * min(1.0, step / 10),
              "grad_norm": 1.0, "tokens_per_s": 1000.0 + step, "samples_per_s": 10.0, "mfu": 0.01,
              "eta_s": float(total - step), "tokens_seen": step * 512, "epoch": step / total, "rss_mb": 512.0}
    fields.update(extra)
    return fields


def step_event(stage: str, step: int, total: int, loss: float, **extra: Any) -> dict[str, Any]:
    """A whole `step` line of events.jsonl, stamped T0 + step."""
    return {"v": 1, "t": T0 + step, "kind": "step", **step_fields(stage, step, total, loss, **extra)}


def event_line(event: dict[str, Any]) -> str:
    return json.dumps(event) + "\n"


def make_run(runs_dir: Path, run_id: str, *, state: str = "finished", pid: int = DEAD_PID, stage: str | None = "pretrain",
             step: int = 0, total: int = 0, loss: float | None = None, events: list[dict[str, Any]] = (),
             stages: list[str] | None = None, log: str = "") -> Path:
    """A run directory as the engine would leave it, written directly."""
    run_dir = runs_dir / run_id
    (run_dir / "control").mkdir(parents=True)
    preset = preset_from_dict({"name": run_id.split("-")[-1], "stages": stages or ["tokenizer", "pretrain", "sft"]})
    (run_dir / "preset.toml").write_text(preset_to_toml(preset), encoding="utf-8")
    status = {"run_id": run_id, "preset": preset.name, "state": state, "stage": stage, "step": step,
              "total_steps": total, "loss": loss, "tokens_per_s": 1234.0 if loss is not None else None,
              "pid": pid, "host": socket.gethostname(), "started_at": T0 - 3600, "heartbeat_at": T0}
    (run_dir / "status.json").write_text(json.dumps(status), encoding="utf-8")
    (run_dir / "events.jsonl").write_text("".join(event_line(e) for e in events), encoding="utf-8")
    (run_dir / "train.log").write_text(log, encoding="utf-8")
    return run_dir
