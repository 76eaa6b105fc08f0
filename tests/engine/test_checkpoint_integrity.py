"""Checkpoints damaged on disk after they were saved: detected by the sizes and hashes state.json records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.checkpoints.checkpoint import list_checkpoints, read_checkpoint, verify_checkpoint
from engine.checkpoints.lookup import resolve_checkpoint
from engine.errors import CheckpointError
from engine.events import Event
from engine.runs.pipeline import run_pipeline
from engine.runs.run_dir import create_run, request_stop


def stopped_run(make_preset) -> Path:
    """A pretrain run stopped at step 5 with checkpoints at steps 2, 4 and 5."""
    run_dir = create_run(make_preset(stages=["tokenizer", "pretrain"],
                                     pretrain={"max_steps": 8, "save_interval": 2, "keep_checkpoints": 5}))

    def stop_at_five(event: Event) -> None:
        if event.kind == "step" and event.step == 5:
            request_stop(run_dir)

    assert run_pipeline(run_dir, listeners=[stop_at_five]).state == "stopped"
    return run_dir


def flip_one_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_saved_file_is_recorded_and_an_intact_checkpoint_verifies(make_preset) -> None:
    """Guards against a record that misses a file (it could then be damaged unnoticed) or that does not
    match what was written (every load would then be refused)."""
    run_dir = stopped_run(make_preset)
    ckpt = read_checkpoint(run_dir / "checkpoints" / "pretrain" / "latest")
    files = {p.relative_to(ckpt.path).as_posix() for p in ckpt.path.rglob("*") if p.is_file()} - {"state.json"}
    assert set(ckpt.state["files"]) == files and {"model.safetensors", "trainer.safetensors"} <= files
    verify_checkpoint(ckpt)


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "deleted"])
def test_resume_skips_a_damaged_latest_checkpoint_with_a_warning(make_preset, damage: str) -> None:
    """Guards against a resume that crashes on, or silently trains from, weights or optimizer state that
    changed on disk after the save (a full disk, a bad copy, bit rot): the previous checkpoint is used."""
    run_dir = stopped_run(make_preset)
    stage_dir = run_dir / "checkpoints" / "pretrain"
    latest = stage_dir / "step_000005"
    target = latest / ("model.safetensors" if damage != "bit-flipped" else "trainer.safetensors")
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:-1000])
    elif damage == "bit-flipped":
        flip_one_byte(target, target.stat().st_size // 2)  # same size: only the hash can tell
    else:
        target.unlink()

    assert run_pipeline(run_dir, resume=True).state == "finished"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    warnings = [e["message"] for e in events if e["kind"] == "warning"]
    named = str(latest) if damage == "deleted" else str(target)  # a missing model file: the folder is incomplete
    assert any(named in w and "Skipping it" in w for w in warnings), warnings
    starts = [e for e in events if e["kind"] == "stage_start" and e["stage"] == "pretrain"]
    assert starts[-1]["start_step"] == 4 and starts[-1]["resumed"]
    assert read_checkpoint(stage_dir / "latest").step == 8
    verify_checkpoint(read_checkpoint(stage_dir / "latest"))


def test_chat_and_export_refuse_a_damaged_checkpoint_naming_the_file(make_preset) -> None:
    """Guards against chatting with or exporting weights that are not the ones that were trained."""
    run_dir = stopped_run(make_preset)
    latest = run_dir / "checkpoints" / "pretrain" / "latest"
    flip_one_byte(latest / "model.safetensors", 200)
    with pytest.raises(CheckpointError, match="model.safetensors does not match the hash"):
        resolve_checkpoint(str(latest))
    earlier = list_checkpoints(run_dir / "checkpoints" / "pretrain")[0]
    assert resolve_checkpoint(str(earlier)).step == 2  # the intact ones still load


class _RunsCodeWhenUnpickled:
    """A pickle that creates a file when loaded: what a malicious .pth could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["full_sft_512.pth", "pytorch_model.bin"])
def test_pickled_weights_are_refused_without_being_unpickled(tmp_path: Path, name: str) -> None:
    """Guards against loading a downloaded .pth/.bin (minimind's published state dicts, old transformers
    folders): unpickling runs whatever code the file holds, so it must be refused with the reason and the
    way to convert a trusted file, and never opened as a pickle."""
    import pickle

    marker = tmp_path / "pwned"
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / name).write_bytes(pickle.dumps({"weight": _RunsCodeWhenUnpickled(marker)}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for spec in (folder, folder / name):
        with pytest.raises(CheckpointError, match=r"pickled weights .*safetensors.*weights_only=True"):
            resolve_checkpoint(str(spec))
    assert not marker.exists()


def test_a_model_folder_that_asks_for_remote_code_is_refused(tmp_path: Path) -> None:
    """Guards against a Hugging Face folder whose config.json names its own modelling code (auto_map):
    the studio runs no code shipped with a model."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "remote"
    folder.mkdir()
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}}))
    with pytest.raises(CheckpointError, match="auto_map"):
        resolve_checkpoint(str(folder))


def test_a_checkpoint_with_optimizer_state_counted_by_position_still_resumes_exactly(make_preset) -> None:
    """Guards the checkpoints written before the optimizer state was keyed by parameter name (it counted
    parameters in the optimizer's order: matrices first, then vectors): resuming one must restore every
    moment onto its own parameter, so the run ends exactly as when resumed from the same checkpoint in the
    current format."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from engine.config import load_preset
    from engine.model.transformer import CausalLM
    from engine.train.step import build_optimizer

    runs = [stopped_run(make_preset) for _ in range(2)]
    old = runs[0] / "checkpoints" / "pretrain" / "step_000005"
    preset = load_preset(runs[0] / "preset.toml")
    model = CausalLM(preset.model)
    order = [{id(p): n for n, p in model.named_parameters()}[id(p)]
             for group in build_optimizer(model, preset.pretrain, torch.device("cpu")).param_groups for p in group["params"]]
    assert order != [n for n, _ in model.named_parameters()]  # the two orders differ: the test can tell them apart
    tensors = load_file(str(old / "trainer.safetensors"))
    state = json.loads((old / "state.json").read_text())
    by_position = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, slot = key[len("optim."):].rsplit(".", 1)
            key = f"optim.{order.index(name)}.{slot}"
        by_position[key] = value
    save_file(by_position, str(old / "trainer.safetensors"))
    meta = state["optimizer"]
    meta.pop("keyed_by")
    meta["param_groups"] = [{**g, "params": [order.index(n) for n in g["params"]]} for g in meta["param_groups"]]
    state.pop("files")  # an old checkpoint has no record of its files either
    (old / "state.json").write_text(json.dumps(state))
    for run_dir in runs:
        assert run_pipeline(run_dir, resume=True).state == "finished"
    final = [load_file(str(r / "checkpoints" / "pretrain" / "latest" / "model.safetensors")) for r in runs]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    shutil.rmtree(runs[1])
