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
        refuse_pickles(path)
    raise CheckpointError(
        f"no checkpoint found at {spec!r}: give a checkpoint directory (runs/<id>/checkpoints/<stage>/latest), "
        f"a run directory, a run id under {out_dir}, or an exported Hugging Face model directory"
    )


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def refuse_pickles(path: Path) -> None:
    """A CheckpointError when `path` is, or is a folder of, pickled weights (minimind publishes `.pth` state
    dicts; transformers once wrote `pytorch_model.bin`). Unpickling a file can run any code in it, so the
    studio loads safetensors only and says how to convert a file the user trusts."""
    pickles = [path] if path.is_file() and path.suffix in PICKLE_SUFFIXES else (
        sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else [])
    if pickles:
        names = ", ".join(p.name for p in pickles[:3])
        raise CheckpointError(
            f"{path}: holds pickled weights ({names}); loading a pickle can run any code in it, so only "
            "safetensors checkpoints load here. If you trust the file, convert it once: python -c \"import torch; "
            "from safetensors.torch import save_file; save_file(torch.load('IN.pth', weights_only=True), "
            "'model.safetensors')\" and put it beside a Llama config.json (an exported folder), or start from a "
            "checkpoint this studio trained")


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
