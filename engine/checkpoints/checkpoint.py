"""Checkpoints that carry their own meaning, written so that a crash never leaves a broken one.

Layout of one checkpoint (a directory):
    model.safetensors      float32 master weights, Hugging Face Llama names (tied lm_head omitted)
    trainer.safetensors    optimizer moments and RNG states (tensors only: loading runs no pickle)
    state.json             stage, step, tokens seen, data position, optimizer hyper-parameters,
                           model config, the preset, metrics
    tokenizer/             the tokenizer the weights were trained with

A checkpoint is built in a hidden temporary directory, flushed to disk, then renamed into place; only
then does the stage's `latest` symlink move to it. An old checkpoint is pruned the other way round:
renamed out of sight first, then deleted. So `latest` always names a complete checkpoint, every visible
`step_*` folder is one, and kill -9 at any moment leaves at worst a hidden `.step_*` folder (being built,
replaced or pruned), which the next save or resume removes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.atomic import point_symlink, publish_dir, write_json_atomic
from engine.config import ModelConfig
from engine.data.token_cache import file_digest
from engine.data.tokenizer_files import copy_tokenizer
from engine.disk_full import writing
from engine.errors import CheckpointError

FORMAT_VERSION = 1



@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.state["model"])

    @property
    def stage(self) -> str:
        return self.state["stage"]

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def tokenizer_dir(self) -> Path:
        # Our checkpoints keep it in tokenizer/; a Hugging Face directory keeps the files beside the weights.
        nested = self.path / "tokenizer"
        return nested if nested.is_dir() else self.path


def model_tensors(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict as safetensors wants it: contiguous, float32 master copies, tied weights once.
    `state`: the model's state dict already gathered (a sharded model's consolidated weights)."""
    state = dict(model.state_dict() if state is None else state)
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}


def gather_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU under the plain model's names, however it is wrapped (DDP,
    FSDP2 shards: gathering is collective, so every rank calls it; rank 0 writes the result)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state: dict[str, Any] = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state


def gather_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name ({"state": {name: {slot: tensor}}, "param_groups"}),
    consolidated on the CPU (collective under FSDP, like gather_model_state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                        model_state: dict[str, torch.Tensor] | None, optimizer_state: dict[str, Any] | None, *,
                        from_rank0: bool = False) -> None:
    """Load consolidated weights (and optimizer state) into a model however it is wrapped. With
    `from_rank0` (a process group), only rank 0 has read the files and passes them; the others pass None
    and receive them by broadcast, so no other node needs a copy of the checkpoint."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    # strict=False: a tied lm_head is saved once, under the embedding's name.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0, strict=False)
    weights: dict[str, Any] = dict(model_state or {})
    set_model_state_dict(model, weights, options=options)
    if optimizer is not None and (optimizer_state is not None or from_rank0):
        set_optimizer_state_dict(model, optimizer, optimizer_state or {}, options=options)


def optimizer_tensors(optimizer_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A name-keyed optimizer state dict ({"state": {param name: {slot: value}}, "param_groups"}) as
    `optim.<param name>.<slot>` tensors plus the param groups for state.json. Keyed by name, not index,
    so the state loads into the model however it is wrapped (DDP, FSDP) and on any world size."""
    tensors: dict[str, torch.Tensor] = {}
    for name, slots in optimizer_state["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{name}.{slot}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    return tensors, {"param_groups": optimizer_state["param_groups"], "keyed_by": "name"}


def rng_tensors(rank: int = 0) -> dict[str, torch.Tensor]:
    """This process's random streams (rank > 0: under its own names, beside rank 0's)."""
    prefix = "rng" if rank == 0 else f"rng.rank{rank}"
    tensors = {f"{prefix}.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{prefix}.cuda.{index}"] = rng
    return tensors


def save_checkpoint(
    stage_dir: Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    state: dict[str, Any],
    tokenizer_dir: Path,
    keep: int,
    rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoints/<stage>/step_NNNNNN atomically, move `latest` to it, prune old ones.
    `model_state` comes from `model_tensors`, `optimizer_state` is name-keyed (`optimizer_tensors`),
    `rng` every rank's random streams (`rng_tensors`; default: this process's)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir / f"step_{state['step']:06d}"
    tmp = stage_dir / f".{final.name}.tmp-{os.getpid()}"
    _remove_stale_temporaries(stage_dir)
    tmp.mkdir()
    with writing(tmp / "model.safetensors"):  # safetensors tells a full disk only as "(os error 28)"
        save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    trainer = dict(rng if rng is not None else rng_tensors())
    state = {**state, "format": FORMAT_VERSION, "saved_at": time.time(), "torch_version": torch.__version__}
    if optimizer_state is not None:
        optim_tensors, optim_meta = optimizer_tensors(optimizer_state)
        trainer.update(optim_tensors)
        state["optimizer"] = optim_meta
    with writing(tmp / "trainer.safetensors"):
        save_file(trainer, str(tmp / "trainer.safetensors"))
    with writing(tmp / "tokenizer"):
        copy_tokenizer(tokenizer_dir, tmp / "tokenizer")
    state["files"] = file_records(tmp)  # last: what every other file must still be when it is loaded
    write_json_atomic(tmp / "state.json", state)
    publish_dir(tmp, final)  # replaces the same step saved before (a resume that re-saves it)
    point_symlink(stage_dir / "latest", final.name)
    prune_checkpoints(stage_dir, keep)
    return final


def _remove_stale_temporaries(stage_dir: Path) -> None:
    """Hidden folders left by a killed save: .step_*.tmp-* (being written), .old-* (replaced), .pruned-*."""
    for leftover in stage_dir.glob(".step_*"):
        shutil.rmtree(leftover, ignore_errors=True)


def tidy_after_kill(stage_dir: Path) -> None:
    """Put right what a save killed half-way left, before the run resumes (the process holding the run only):
    the hidden folders are removed, and a stage whose first checkpoint was published but whose `latest` was
    never made gets it, pointing at its newest complete checkpoint. Else the killed save may have been the
    stage's last, and the finished stage would have no `latest`."""
    _remove_stale_temporaries(stage_dir)
    link, done = stage_dir / "latest", list_checkpoints(stage_dir)
    if done and not link.exists():  # missing, or naming a folder that is gone
        point_symlink(link, done[-1].name)


def list_checkpoints(stage_dir: Path) -> list[Path]:
    """Complete checkpoints of a stage, oldest first."""
    if not stage_dir.is_dir():
        return []
    return sorted(p for p in stage_dir.glob("step_*") if (p / "state.json").is_file())


def prune_checkpoints(stage_dir: Path, keep: int) -> None:
    latest = (stage_dir / "latest").resolve()
    for old in list_checkpoints(stage_dir)[:-keep]:
        if old.resolve() != latest:
            # Out of sight in one rename first: a kill during the delete must not leave a visible step_* folder
            # with some of its files gone (a damaged checkpoint in every listing, or one no save ever removes).
            doomed = old.with_name(f".{old.name}.pruned-{os.getpid()}")
            try:
                os.rename(old, doomed)
            except OSError:
                continue  # kept whole; the next save tries again
            shutil.rmtree(doomed, ignore_errors=True)


def read_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.is_file() or not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no state.json/model.safetensors)")
    return Checkpoint(path=path.resolve(), state=json.loads(state_file.read_text(encoding="utf-8")))


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and content hash of every file in a checkpoint folder (but state.json, which holds them).
    The files are hashed on threads (hashlib releases the GIL): weights and optimizer state in parallel."""
    files = [file for file in sorted(folder.rglob("*")) if file.is_file() and file.name != "state.json"]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(file_digest, files))
    return {file.relative_to(folder).as_posix(): {"bytes": file.stat().st_size, "blake2b": digest}
            for file, digest in zip(files, digests)}


def verify_checkpoint(ckpt: Checkpoint) -> None:
    """CheckpointError naming the first file that is missing, truncated or altered since the save (a
    checkpoint written before sizes and hashes were recorded has nothing to check against)."""
    for name, expected in ckpt.state.get("files", {}).items():
        file = ckpt.path / name
        if not file.is_file():
            problem = "is missing"
        elif file.stat().st_size != expected["bytes"]:
            problem = f"has {file.stat().st_size:,} bytes, {expected['bytes']:,} were saved (truncated or replaced)"
        elif file_digest(file) != expected["blake2b"]:
            problem = "does not match the hash recorded when it was saved (altered or corrupted on disk)"
        else:
            continue
        raise CheckpointError(f"{file} {problem}; this checkpoint cannot be trusted. Use an earlier checkpoint of "
                              f"{ckpt.path.parent} (or its run's other stage), or retrain from there.")


def latest_intact_checkpoint(stage_dir: Path, warn: Callable[[str], None]) -> Checkpoint | None:
    """The newest checkpoint of a stage whose files are as saved; each damaged newer one is skipped with a
    warning (what resume starts from: a checkpoint damaged on disk must not end or poison the run)."""
    link = stage_dir / "latest"
    candidates = [link.resolve()] if link.exists() else []
    candidates += [p.resolve() for p in reversed(list_checkpoints(stage_dir)) if p.resolve() not in candidates]
    for path in candidates:
        try:
            ckpt = read_checkpoint(path)
            verify_checkpoint(ckpt)
            return ckpt
        except CheckpointError as error:
            warn(f"{str(error).rstrip('.')}. Skipping it: resuming from the checkpoint before it.")
    return None


def latest_checkpoint(stage_dir: Path) -> Checkpoint | None:
    link = stage_dir / "latest"
    if link.exists():
        return read_checkpoint(link)
    done = list_checkpoints(stage_dir)
    return read_checkpoint(done[-1]) if done else None


def read_model_tensors(ckpt_dir: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint's weights, checked to fit `model` by name (a tied lm_head may be absent)."""
    tensors = load_file(str(Path(ckpt_dir) / "model.safetensors"))
    expected = set(model.state_dict())
    allowed_missing = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing, unexpected = sorted(expected - set(tensors) - allowed_missing), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt_dir}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    return tensors


def load_model_weights(model: torch.nn.Module, ckpt_dir: Path) -> None:
    model.load_state_dict(read_model_tensors(ckpt_dir, model), strict=False)


def read_trainer_state(ckpt: Checkpoint, names: list[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checkpoint's optimizer state, name-keyed (what `load_training_state` takes), and its RNG tensors.

    `names`: the model's parameter names in the optimizer's order, to read checkpoints written before the
    state was keyed by name (their slots and param groups count parameters by position)."""
    tensors = load_file(str(ckpt.path / "trainer.safetensors"))
    meta = ckpt.state["optimizer"]
    slots: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, slot = key[len("optim."):].rsplit(".", 1)
            slots.setdefault(name, {})[slot] = value
    groups = meta["param_groups"]
    if meta.get("keyed_by") != "name":  # positions: the order build_optimizer lists parameters in
        slots = {names[int(index)]: value for index, value in slots.items()}
        groups = [{**group, "params": [names[int(i)] for i in group["params"]]} for group in groups]
    rng = {key: value for key, value in tensors.items() if key.startswith("rng")}
    return {"state": slots, "param_groups": groups}, rng


def restore_rng(rng: dict[str, torch.Tensor], rank: int = 0) -> None:
    """This rank's random streams as saved (rank 0's for a rank the checkpoint did not have), so a resumed
    run continues bit-for-bit on the CPU."""
    prefix = f"rng.rank{rank}" if rank and f"rng.rank{rank}.cpu" in rng else "rng"
    torch.set_rng_state(rng[f"{prefix}.cpu"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith(f"{prefix}.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
