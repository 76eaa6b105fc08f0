"""The studio's single door to starting runs; tests monkeypatch these functions.

`check` imports torch (through engine.pipeline) and so must only ever run inside a thread worker.
"""

from __future__ import annotations

from pathlib import Path

from engine.config import Preset


def check(preset: Preset, source: str) -> None:
    """The CLI's preflight (data files, tokenizer, from_weight checkpoints); raises PresetError."""
    from engine.pipeline import preflight

    preflight(preset, source)


def launch(preset: Preset) -> Path:
    """Create the run directory and start it detached; returns the run directory at once."""
    from engine.runs import create_run, launch_detached

    run_dir = create_run(preset)
    launch_detached(run_dir)
    return run_dir


def resume(run_dir: Path) -> int:
    """Continue a stopped, failed or crashed run detached; RunBusy if it is still alive."""
    from engine.runs import RunLock, launch_detached

    with RunLock(run_dir):  # refuse now, with a message, rather than start a process that exits at once
        pass
    return launch_detached(run_dir, resume=True)
