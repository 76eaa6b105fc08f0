"""The studio's single door to starting runs; tests monkeypatch these functions.

`check`, `detect_target` and `estimate` import torch (engine.runs.pipeline, engine.train.calibrate and
engine.model.transformer) and so must only ever run inside a thread worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import Preset

# engine.hardware.estimate is torch-free at import (its functions import engine.model.transformer), so start-up may load it.
from engine.hardware.estimate import StageEstimate, Target


@dataclass(frozen=True)
class LaunchEstimate:
    """The pre-flight estimate of a preset about to be launched: what `minimind-studio estimate` prints."""

    title: str  # "tiny: 1.9M parameters, 12 MFLOP per training token"
    target: Target
    stages: list[StageEstimate]  # the training stages only: the tokenizer stage needs next to no memory

    @property
    def fits(self) -> bool | None:
        """False if any stage does not fit, None if the device memory is unknown, else True."""
        verdicts = [stage.fits for stage in self.stages]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    @property
    def misfits(self) -> list[StageEstimate]:
        return [stage for stage in self.stages if stage.fits is False]


def check(preset: Preset, source: str) -> None:
    """The CLI's preflight (data files, tokenizer, from_weight checkpoints); raises PresetError."""
    from engine.runs.pipeline import preflight

    preflight(preset, source)


def detect_target(preset: Preset) -> Target:
    """The device the run would use, its memory and peak, resolved as training resolves them."""
    from engine.train.calibrate import detect_target as detect

    return detect(preset)


def target_key(preset: Preset) -> tuple[str, str]:
    """What `detect_target`'s answer depends on, so the studio can cache it for the session."""
    return preset.runtime.device, preset.runtime.dtype


def estimate(preset: Preset, target: Target) -> LaunchEstimate:
    """Memory, fit and time of each training stage on target, as `minimind-studio estimate` computes them."""
    from engine.hardware.estimate import data_size, estimate_stage
    from studio.estimate_view import estimate_title

    stages = [stage for stage in preset.stages if stage != "tokenizer"]
    estimates = [estimate_stage(preset, stage, target, data_bytes=data_size(preset, stage)) for stage in stages]
    return LaunchEstimate(estimate_title(preset), target, estimates)


def launch(preset: Preset) -> Path:
    """Create the run directory and start it detached; returns the run directory at once."""
    from engine.runs.run_dir import create_run, launch_detached

    run_dir = create_run(preset)
    launch_detached(run_dir)
    return run_dir


def resume(run_dir: Path) -> int:
    """Continue a stopped, failed or crashed run detached; RunBusy if it is alive or another studio or
    shell is starting it."""
    from engine.runs.manage import reserve_start
    from engine.runs.run_dir import launch_detached

    reserve_start(run_dir)  # refuse now, with a message, rather than start a process that exits at once
    return launch_detached(run_dir, resume=True)
