"""Which checkpoint the user means: what they typed (a path, a run, a run id), `from_weight = "latest"`,
and whether it fits the preset's model. The file format itself is engine/checkpoints/checkpoint.py's."""

from __future__ import annotations

from pathlib import Path

from engine.checkpoints.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    verify_checkpoint,
)
from engine.checkpoints.hf_export import is_hf_dir, read_hf_checkpoint
from engine.config import ModelConfig, output_path, resolve_path
from engine.errors import CheckpointError


def resolve_checkpoint(spec: str, out_dir: str | Path = "runs", prefer: tuple[str, ...] = ("sft", "pretrain")) -> Checkpoint:
    """A checkpoint from what a user types: a checkpoint dir, a stage dir, a run dir or a run id; one of ours
    is verified against the sizes and hashes recorded at save time (CheckpointError naming the damaged file)."""
    found = _find_checkpoint(spec, out_dir, prefer)
    if found.state.get("files"):
        verify_checkpoint(found)
    return found


def _find_checkpoint(spec: str, out_dir: str | Path, prefer: tuple[str, ...]) -> Checkpoint:
    candidates = [resolve_path(spec), output_path(out_dir) / spec]
    for path in candidates:
        if (path / "state.json").is_file():
            return read_checkpoint(path)
        if is_hf_dir(path):
            return read_hf_checkpoint(path)
        if (path / "latest").exists() or list_checkpoints(path):
            found = latest_checkpoint(path)
            if found:
                return found
        for stage in prefer:
            found = latest_checkpoint(path / "checkpoints" / stage)
            if found:
                return found
    raise CheckpointError(
        f"no checkpoint found at {spec!r}: give a checkpoint directory (runs/<id>/checkpoints/<stage>/latest), "
        f"a run directory, a run id under {out_dir}, or an exported Hugging Face model directory"
    )


def newest_matching_checkpoint(out_dir: str | Path, stage: str, model: ModelConfig) -> Checkpoint:
    """from_weight = 'latest': the newest complete `stage` checkpoint under out_dir with this architecture."""
    found: list[Checkpoint] = []
    for stage_dir in sorted(output_path(out_dir).glob(f"*/checkpoints/{stage}")):
        ckpt = latest_checkpoint(stage_dir)
        if ckpt and ckpt.model_config.architecture() == model.architecture():
            found.append(ckpt)
    if not found:
        raise CheckpointError(
            f"from_weight = 'latest' found no {stage} checkpoint under {out_dir} whose architecture matches the "
            f"preset's [model]; run a pretrain first or set from_weight to a checkpoint path"
        )
    return max(found, key=lambda c: c.state.get("saved_at", 0))


def check_architecture(ckpt: Checkpoint, model: ModelConfig, field: str) -> None:
    theirs, ours = ckpt.model_config.architecture(), model.architecture()
    diff = [f"{k}: checkpoint {theirs[k]} vs preset {ours.get(k)}" for k in theirs if theirs[k] != ours.get(k)]
    if diff:
        raise CheckpointError(
            f"{field} = {str(ckpt.path)!r} has a different architecture ({'; '.join(diff)}). "
            "Make the preset's [model] section match the checkpoint, or start from a matching checkpoint."
        )
