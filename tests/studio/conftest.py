"""Fixtures for studio tests: fake run directories written by hand (no training), and a fixed clock."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from engine.config import preset_from_dict, preset_to_toml


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests in a fresh event loop (App.run_test is async; no pytest-asyncio needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**arguments))
    return True


T0 = 1_700_000_000.0  # a fixed "now" so ages and clocks in the UI are deterministic
DEAD_PID = 4_000_000  # above the default pid_max: never a live process


def step_event(stage: str, step: int, total: int, loss: float, **extra: Any) -> dict[str, Any]:
    event = {"v": 1, "t": T0 + step, "kind": "step", "stage": stage, "step": step, "total_steps": total,
             "loss": loss, "lr": 1e-3 * min(1.0, step / 10), "grad_norm": 1.0, "tokens_per_s": 1000.0 + step,
             "samples_per_s": 10.0, "mfu": 0.01, "eta_s": float(total - step), "tokens_seen": step * 512,
             "epoch": step / total, "rss_mb": 512.0}
    event.update(extra)
    return event


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


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def fixed_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Event lines show local clock times; pin the zone so text and snapshots match everywhere."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real tokenizer -> pretrain -> sft run of a very small model (hidden 32, 2 layers), trained
    once per session for the chat and data tests."""
    from engine.pipeline import run_pipeline
    from engine.runs import create_run
    from tests.engine.conftest import preset_factory, write_corpus

    root = tmp_path_factory.mktemp("tiny")
    make = preset_factory(write_corpus(root / "corpus", n_docs=120, n_dialogues=60), root)
    run_dir = create_run(make(name="tiny", pretrain={"max_steps": 8}, sft={"max_steps": 4}))
    run_pipeline(run_dir)
    return run_dir
