"""The training loop end to end on tiny real models: stages, resume exactness, crash safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.checkpoints.checkpoint import list_checkpoints, read_checkpoint
from engine.config import TrainStage
from engine.errors import CheckpointError, DataError, NonFiniteLoss
from engine.events import Event, iter_events
from engine.runs.pipeline import run_pipeline
from engine.runs.run_dir import create_run, read_status, request_stop
from engine.train.step import lr_at


def step_losses(run_dir: Path, stage: str = "pretrain") -> dict[int, float]:
    return {e.step: e.loss for e in iter_events(run_dir / "events.jsonl") if e.kind == "step" and e.stage == stage}


def test_lr_schedule_warmup_then_cosine_to_floor() -> None:
    """Guards against an off-by-one warmup (lr 0 at step 0) or a decay that never reaches its floor."""
    cfg = TrainStage(learning_rate=1e-3, warmup_iters=10, min_lr_ratio=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(9, 100, cfg) == pytest.approx(1e-3)
    decay = [lr_at(s, 100, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == pytest.approx(1e-4)


def test_all_stages_produce_tokenizer_checkpoints_and_valid_events(make_preset) -> None:
    """Guards against a pipeline that 'finishes' without its outputs, or SFT not starting from pretrain."""
    run_dir = create_run(make_preset())
    result = run_pipeline(run_dir)
    assert result.state == "finished"
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    for stage in ("pretrain", "sft"):
        ckpt = read_checkpoint(run_dir / "checkpoints" / stage / "latest")
        assert ckpt.stage == stage and ckpt.step == ckpt.state["total_steps"]
        assert (ckpt.tokenizer_dir / "tokenizer.json").is_file()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert all(e["v"] == 1 and isinstance(e["t"], float) and e["kind"] for e in events)
    sft_start = next(e for e in events if e["kind"] == "stage_start" and e["stage"] == "sft")
    assert "checkpoints/pretrain" in sft_start["init_from"]
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["stages_done"] == ["pretrain", "sft", "tokenizer"]


def test_training_reduces_loss(make_preset) -> None:
    """Guards against a loop that steps the optimizer without learning (e.g. zeroed or detached grads)."""
    run_dir = create_run(make_preset(stages=["tokenizer", "pretrain"], pretrain={"max_steps": 40}))
    run_pipeline(run_dir)
    losses = step_losses(run_dir)
    assert losses[40] < losses[1] - 1.5


def test_resume_continues_the_same_loss_curve_bit_for_bit(make_preset) -> None:
    """Guards against resume losing optimizer moments, the data position (across an epoch boundary: batch
    64 of ~317 sequences is 4 batches an epoch), RNG (dropout) or the LR schedule."""
    preset = make_preset(stages=["tokenizer", "pretrain"], model={"dropout": 0.1},
                         pretrain={"max_steps": 10, "batch_size": 64})
    straight = create_run(preset)
    run_pipeline(straight)

    interrupted = create_run(preset)

    def stop_at_four(event: Event) -> None:
        if event.kind == "step" and event.step == 5:
            request_stop(interrupted)

    first = run_pipeline(interrupted, listeners=[stop_at_four])
    assert first.state == "stopped" and read_status(interrupted)["state"] == "stopped"
    assert [p.name for p in list_checkpoints(interrupted / "checkpoints" / "pretrain")] == ["step_000005"]
    second = run_pipeline(interrupted, resume=True)
    assert second.state == "finished"

    assert step_losses(interrupted) == step_losses(straight)
    epochs = [e.epoch for e in iter_events(interrupted / "events.jsonl") if e.kind == "step"]
    assert max(epochs) > 2  # the run really crossed epoch boundaries
    a = load_file(str(straight / "checkpoints/pretrain/latest/model.safetensors"))
    b = load_file(str(interrupted / "checkpoints/pretrain/latest/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crash_while_saving_keeps_previous_checkpoint_loadable(make_preset, monkeypatch) -> None:
    """Guards against `latest` pointing at a half-written checkpoint after a crash mid-save."""
    import engine.atomic as atomic

    real_fsync = atomic.fsync_tree

    def crash_on_the_second_checkpoint(path: Path) -> None:
        if path.name.startswith(".step_000004"):  # the folder being flushed before it is published
            raise OSError("disk vanished mid-save")
        real_fsync(path)

    monkeypatch.setattr(atomic, "fsync_tree", crash_on_the_second_checkpoint)
    run_dir = create_run(make_preset(stages=["tokenizer", "pretrain"], pretrain={"save_interval": 2}))
    with pytest.raises(OSError, match="disk vanished"):
        run_pipeline(run_dir)
    stage_dir = run_dir / "checkpoints" / "pretrain"
    assert read_checkpoint(stage_dir / "latest").step == 2
    assert any(p.name.startswith(".step_000004.tmp") for p in stage_dir.iterdir())
    assert read_status(run_dir)["state"] == "failed"

    monkeypatch.setattr(atomic, "fsync_tree", real_fsync)
    assert run_pipeline(run_dir, resume=True).state == "finished"
    assert read_checkpoint(stage_dir / "latest").step == 6
    assert not any(p.name.startswith(".step_") for p in stage_dir.iterdir())


def test_keeps_only_the_last_n_checkpoints(make_preset) -> None:
    """Guards against checkpoints filling the disk on long runs."""
    run_dir = create_run(make_preset(stages=["tokenizer", "pretrain"], pretrain={"save_interval": 1, "keep_checkpoints": 2}))
    run_pipeline(run_dir)
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints" / "pretrain")] == ["step_000005", "step_000006"]


def test_non_finite_loss_fails_with_advice_and_keeps_last_good_checkpoint(make_preset, monkeypatch) -> None:
    """Guards against a NaN run training on (wasting hours) or destroying its last good checkpoint."""
    from engine.model.transformer import CausalLM

    real_forward = CausalLM.forward
    calls = [0]

    def poisoned(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] > 4 and out.loss is not None:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(CausalLM, "forward", poisoned)
    run_dir = create_run(make_preset(stages=["tokenizer", "pretrain"], pretrain={"save_interval": 2}))
    with pytest.raises(NonFiniteLoss, match=r"step 5.*learning_rate"):
        run_pipeline(run_dir)
    assert read_status(run_dir)["state"] == "failed"
    assert read_checkpoint(run_dir / "checkpoints" / "pretrain" / "latest").step == 4


def test_sft_from_weight_with_other_architecture_is_refused(make_preset) -> None:
    """Guards against SFT silently loading weights of another shape (or crashing with a tensor error)."""
    pre = create_run(make_preset(stages=["tokenizer", "pretrain"]))
    run_pipeline(pre)
    other = make_preset(stages=["sft"], model={"hidden_size": 64}, sft={"from_weight": str(pre)})
    with pytest.raises(CheckpointError, match=r"hidden_size: checkpoint 32 vs preset 64"):
        run_pipeline(create_run(other))


def test_sft_only_run_takes_tokenizer_from_its_starting_checkpoint(make_preset) -> None:
    """Guards against an SFT-only preset having no tokenizer, and 'latest' not finding the pretrain."""
    pre = create_run(make_preset(stages=["tokenizer", "pretrain"]))
    run_pipeline(pre)
    sft_run = create_run(make_preset(stages=["sft"], sft={"from_weight": "latest"}))
    assert run_pipeline(sft_run).state == "finished"
    assert (sft_run / "tokenizer" / "tokenizer.json").read_bytes() == (pre / "tokenizer" / "tokenizer.json").read_bytes()


def test_preflight_names_the_field_of_a_missing_input(make_preset, tmp_path) -> None:
    """Guards against a launch that creates a run dir and then dies on a missing file deep in a stage."""
    from engine.errors import PresetError
    from engine.runs.pipeline import preflight

    with pytest.raises(PresetError, match=r"x.toml: pretrain.data_path = '/nope.jsonl': file not found"):
        preflight(make_preset(pretrain={"data_path": "/nope.jsonl"}), "x.toml")
    with pytest.raises(PresetError, match=r"x.toml: no checkpoint found at"):
        preflight(make_preset(stages=["sft"], sft={"from_weight": str(tmp_path / "missing")}), "x.toml")
    with pytest.raises(PresetError, match=r"from_weight = 'latest' found no pretrain checkpoint"):
        preflight(make_preset(stages=["sft"], sft={"from_weight": "latest"}), "x.toml")
    preflight(make_preset(), "x.toml")  # the fixture's own preset is fine


def test_every_event_line_validates_against_the_schema(trained_run) -> None:
    """Guards against the writer drifting from the pydantic event models the studio and CLI read with."""
    from engine.events import parse_event

    kinds = set()
    for line in (trained_run / "events.jsonl").read_text().splitlines():
        event = parse_event(json.loads(line))
        kinds.add(event.kind)
    assert {"stage_start", "step", "eval", "checkpoint", "sample", "stage_end"} <= kinds


def test_periodic_eval_emits_samples_and_training_continues(make_preset) -> None:
    """Guards against mid-stage evaluation breaking training (generation tensors reused in backward)."""
    run_dir = create_run(make_preset(stages=["tokenizer", "pretrain"], pretrain={"eval_interval": 3, "max_steps": 6}))
    assert run_pipeline(run_dir).state == "finished"
    samples = [e for e in iter_events(run_dir / "events.jsonl") if e.kind == "sample"]
    assert [s.step for s in samples] == [3, 6] and all(s.prompt for s in samples)


def test_a_token_cache_build_reports_its_progress(make_preset, monkeypatch):
    """Guards the minutes before the first step on a big file: the cache build must be visible as
    cache_progress events (bytes done up to the file size, MB/s) that validate against the schema, and
    runtime.data_workers must reach the build (its parallel result is tested in test_cache_build.py)."""
    import json as _json

    from engine.events import parse_event
    from engine.runs.pipeline import run_pipeline
    from engine.runs.run_dir import create_run
    from engine.train import stage_data

    asked = []
    real_build = stage_data.build_token_cache

    def build(*args, **kwargs):
        asked.append(kwargs["workers"])
        return real_build(*args, **{**kwargs, "workers": 1})  # one process: spawning workers costs seconds

    monkeypatch.setattr(stage_data, "build_token_cache", build)
    preset = make_preset(stages=["tokenizer", "pretrain"], pretrain={"max_steps": 2}, runtime={"data_workers": 3})
    run_dir = create_run(preset)
    run_pipeline(run_dir)
    events = [_json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    progress = [e for e in events if e["kind"] == "cache_progress"]
    assert progress and progress[-1]["bytes_done"] == progress[-1]["bytes_total"] > 0
    for event in progress:
        parse_event(event)
    assert asked == [3]


def poison_training_steps(monkeypatch, steps: set[int]) -> None:
    """Make the loss NaN on the given (1-based) training forward passes, as a bad batch or an overflow would."""
    from engine.model import transformer

    real_forward = transformer.CausalLM.forward
    calls = [0]

    def forward(self, input_ids, targets=None, **kwargs):
        out = real_forward(self, input_ids, targets=targets, **kwargs)
        if targets is not None and self.training:
            calls[0] += 1
            if calls[0] in steps:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(transformer.CausalLM, "forward", forward)


def test_skip_nonfinite_steps_drops_bad_updates_and_counts_them(make_preset, monkeypatch) -> None:
    """Guards against one NaN batch ending a long run when the preset allows skipping, against a skipped
    update still reaching the weights, and against skips going uncounted."""
    poison_training_steps(monkeypatch, {3, 5})
    preset = make_preset(stages=["tokenizer", "pretrain"],
                         pretrain={"max_steps": 8, "log_interval": 1, "skip_nonfinite_steps": 2})
    run_dir = create_run(preset)
    assert run_pipeline(run_dir).state == "finished"
    events = list(iter_events(run_dir / "events.jsonl"))
    warnings = [e.message for e in events if e.kind == "warning" and "not finite" in e.message]
    assert len(warnings) == 2 and "step 3 was not finite" in warnings[0] and "(2 of 2 allowed)" in warnings[1]
    steps = [e for e in events if e.kind == "step"]
    assert [e.skipped_nonfinite for e in steps] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert steps[2].loss is None and all(e.loss is not None for e in steps if e.step not in (3, 5))
    weights = load_file(str(run_dir / "checkpoints/pretrain/latest/model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_one_nonfinite_step_more_than_allowed_stops_the_run(make_preset, monkeypatch) -> None:
    """Guards against skip_nonfinite_steps hiding a run that diverges for good: past the allowance the
    stage fails with the step, the setting and the advice."""
    poison_training_steps(monkeypatch, {2, 4})
    run_dir = create_run(make_preset(stages=["tokenizer", "pretrain"],
                                     pretrain={"max_steps": 8, "skip_nonfinite_steps": 1}))
    with pytest.raises(NonFiniteLoss, match=r"step 4 was not finite .* pretrain.skip_nonfinite_steps = 1"):
        run_pipeline(run_dir)
    assert read_status(run_dir)["state"] == "failed"


def test_pretrain_skip_rule_covers_the_tokenizer_reading_the_same_file(make_preset, tmp_path) -> None:
    """Guards against a run with pretrain.on_bad_line = "skip" still stopping at the first bad line in the
    tokenizer stage, which reads the same file (issue 15); a different file keeps tokenizer.on_bad_line."""
    source = Path(make_preset().pretrain.data_path)
    dirty = tmp_path / "dirty.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()
    dirty.write_text("\n".join(lines[:5] + ["{not json", '{"txt": "wrong key"}'] + lines[5:]) + "\n", encoding="utf-8")
    preset = make_preset(stages=["tokenizer", "pretrain"], tokenizer={"data_path": str(dirty)},
                         pretrain={"data_path": str(dirty), "on_bad_line": "skip", "max_steps": 2})
    run_dir = create_run(preset)
    assert run_pipeline(run_dir).state == "finished"
    end = next(e for e in iter_events(run_dir / "events.jsonl") if e.kind == "stage_end" and e.stage == "tokenizer")
    assert end.skipped_lines == 2

    elsewhere = make_preset(stages=["tokenizer", "pretrain"], tokenizer={"data_path": str(dirty)},
                            pretrain={"on_bad_line": "skip", "max_steps": 2})
    with pytest.raises(DataError, match=r'dirty.jsonl:6: .*tokenizer.on_bad_line = "skip"'):
        run_pipeline(create_run(elsewhere))
