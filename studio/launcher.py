"""The studio's single door to starting runs; tests monkeypatch these functions.

`check` and `detect_target` import torch (the stages' preflight, engine.train.calibrate) and so must only
ever run inside a thread worker; `estimate` is arithmetic (engine.api.estimate, over engine.hardware.flops).
"""

from __future__ import annotations

from pathlib import Path

from engine.api import estimate as estimates
from engine.api import runs
from engine.api.estimate import Estimate, Target
from engine.config import Preset


def check(preset: Preset, source: str) -> None:
    """The CLI's preflight (data files, tokenizer, from_weight checkpoints); raises PresetError."""
    runs.check(preset, source)


def detect_target(preset: Preset) -> Target:
    """The device the run would use, its memory and peak, resolved as training resolves them."""
    return estimates.detect_target(preset)


def target_key(preset: Preset) -> tuple[str, str]:
    """What `detect_target`'s answer depends on, so the studio can cache it for the session."""
    return estimates.target_key(preset)


def estimate(preset: Preset, target: Target) -> Estimate:
    """Memory, fit and time of each training stage on target, as `minimind-studio estimate` computes them."""
    return estimates.estimate(preset, target)


def launch(preset: Preset) -> Path:
    """Create the run directory and start it detached; returns the run directory at once."""
    return runs.launch(preset).dir


def resume(run_dir: Path) -> int:
    """Continue a stopped, failed or crashed run detached; RunBusy if it is alive or another studio or
    shell is starting it (refused now, with a message, rather than a process that exits at once)."""
    return runs.resume_detached(run_dir)[1]
