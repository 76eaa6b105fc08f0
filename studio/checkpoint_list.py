"""Checkpoints the chat tab can load: runs/*/checkpoints/<stage>/{latest, step_*} (directory reads only:
engine.checkpoints.checkpoint imports torch, which must wait for the chat worker)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.api.runs import list_runs

STAGE_ORDER = ("sft", "pretrain")  # chat-ready checkpoints first


@dataclass(frozen=True)
class CheckpointChoice:
    path: Path
    run_id: str
    stage: str
    name: str  # latest | step_000040

    @property
    def label(self) -> str:
        return f"{self.run_id} · {self.stage} · {self.name}"

    @property
    def mode(self) -> str:
        return "continue" if self.stage == "pretrain" else "chat"


def _complete(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "model.safetensors").is_file()


def list_checkpoint_choices(runs_dir: Path) -> list[CheckpointChoice]:
    """Newest runs first; within a run SFT before pretrain; `latest` before the numbered steps."""
    choices = []
    for run_dir in reversed(list_runs(runs_dir)):
        stage_dirs = [d for d in (run_dir / "checkpoints").glob("*") if d.is_dir()]
        stage_dirs.sort(key=lambda d: (STAGE_ORDER.index(d.name) if d.name in STAGE_ORDER else 9, d.name))
        for stage_dir in stage_dirs:
            latest = stage_dir / "latest"
            if latest.exists() and _complete(latest):
                choices.append(CheckpointChoice(latest, run_dir.name, stage_dir.name, f"latest ({latest.resolve().name})"))
            for step_dir in sorted(stage_dir.glob("step_*"), reverse=True):
                if _complete(step_dir):
                    choices.append(CheckpointChoice(step_dir, run_dir.name, stage_dir.name, step_dir.name))
    return choices

