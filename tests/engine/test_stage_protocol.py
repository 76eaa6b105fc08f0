"""Adding a stage is a module plus its preset section: a stage defined here, in the test, runs through the real
pipeline (events, status.json, stop, resume, preflight) with no edit to the pipeline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from engine.config import PROJECT_ROOT, load_preset, preset_to_toml, save_preset
from engine.errors import PresetError
from engine.events import Event, StageEndEvent, StageStartEvent, StepEvent, iter_events
from engine.runs.pipeline import preflight, run_pipeline, run_stages
from engine.runs.run import Run
from engine.runs.run_dir import create_run, read_status, request_stop
from engine.stages import Stage, StageContext, StageResult, register, unregister
from engine.train.distributed import World


class CountSection(BaseModel):
    """[count]: count up to `steps`, one file per step, reading `data_path` first."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(6, ge=1)
    data_path: str = "dataset/pretrain.jsonl"


class CountStage(Stage):
    """A stage with its own outputs (checkpoints/count/step_N), which resumes from the newest one."""

    name = "count"

    def preflight(self, preset, source: str) -> None:
        cfg = preset.section(self.name)
        if not Path(cfg.data_path).is_absolute() and not (PROJECT_ROOT / cfg.data_path).is_file():
            raise PresetError(f"{source}: count.data_path = {cfg.data_path!r}: file not found")

    def run(self, ctx: StageContext) -> StageResult:
        cfg = ctx.preset.section(self.name)
        out = ctx.stage_dir(self.name)
        out.mkdir(parents=True, exist_ok=True)
        done = max((int(p.name.removeprefix("step_")) for p in out.glob("step_*")), default=0) if ctx.resume else 0
        ctx.log.emit(StageStartEvent(stage=self.name, total_steps=cfg.steps, start_step=done, resumed=done > 0))
        started = time.perf_counter()
        step = done
        while step < cfg.steps:
            step += 1
            (out / f"step_{step}").write_text(str(step))
            ctx.log.emit(StepEvent(stage=self.name, step=step, total_steps=cfg.steps, loss=1.0 / step, lr=0.0,
                                   grad_norm=None, tokens_per_s=1.0, samples_per_s=1.0, eta_s=0.0, tokens_seen=step,
                                   epoch=step / cfg.steps))
            if ctx.should_stop() and step < cfg.steps:
                ctx.log.emit(StageEndEvent(stage=self.name, state="stopped", step=step, total_steps=cfg.steps))
                return StageResult(self.name, "stopped", step, cfg.steps, time.perf_counter() - started)
        ctx.log.emit(StageEndEvent(stage=self.name, state="finished", step=step, total_steps=cfg.steps, loss=1.0 / step))
        return StageResult(self.name, "finished", step, cfg.steps, time.perf_counter() - started,
                           metrics={"counted": step - done})


@pytest.fixture
def count_stage() -> Iterator[None]:
    register(CountStage(), CountSection)
    yield
    unregister("count")


def write_preset(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "count.toml"
    path.write_text(f'name = "count"\nstages = ["count"]\nout_dir = "{tmp_path / "runs"}"\n\n[count]\n{section}\n',
                    encoding="utf-8")
    return path


def test_a_stage_defined_in_a_test_runs_stops_and_resumes_through_the_real_pipeline(count_stage, tmp_path: Path) -> None:
    """Guards against the pipeline knowing its stages by name (a new stage had to be wired into the loop, the
    rank loop, status writes and preflight by hand): this one is registered, not written into the pipeline."""
    preset = load_preset(write_preset(tmp_path, "steps = 6"))
    assert preset.section("count").steps == 6 and "[count]" in preset_to_toml(preset)
    preflight(preset, "count.toml")
    run_dir = create_run(preset)
    assert load_preset(run_dir / "preset.toml").section("count").steps == 6  # the frozen copy keeps the section

    def stop_at_two(event: Event) -> None:
        if isinstance(event, StepEvent) and event.step == 2:
            request_stop(run_dir)

    first = run_pipeline(run_dir, listeners=[stop_at_two])
    assert first.state == "stopped" and first.stages["count"].step == 2
    status = read_status(run_dir)
    assert status["state"] == "stopped" and status["stage"] == "count" and status["exit_reason"] == "stop requested (control/stop)"

    second = run_pipeline(run_dir, resume=True)
    assert second.state == "finished" and second.stages["count"].metrics == {"counted": 4}  # 3..6, not from 1
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["stages_done"] == ["count"] and status["step"] == 6
    assert sorted(p.name for p in (run_dir / "checkpoints" / "count").iterdir()) == [f"step_{n}" for n in range(1, 7)]
    events = list(iter_events(run_dir / "events.jsonl"))  # every line validates against the event schema
    assert [(e.start_step, e.resumed) for e in events if isinstance(e, StageStartEvent)] == [(0, False), (2, True)]
    assert [e.state for e in events if isinstance(e, StageEndEvent)] == ["stopped", "finished"]

    third = run_pipeline(run_dir, resume=True)  # a done stage is skipped, not run again
    assert third.state == "finished" and third.stages == {}


def test_a_registered_stage_section_is_validated_and_checked_before_launch(count_stage, tmp_path: Path) -> None:
    """Guards against a new stage's settings bypassing the preset's checks: a misspelt field or a bad value is a
    located PresetError, and the stage's own preflight runs before anything is launched."""
    with pytest.raises(PresetError, match=r"count\.toml \[count\]: invalid preset: unknown field 'stepz'"):
        load_preset(write_preset(tmp_path, "stepz = 3"))
    with pytest.raises(PresetError, match=r"field 'steps' \(got 0\)"):
        load_preset(write_preset(tmp_path, "steps = 0"))
    preset = load_preset(write_preset(tmp_path, 'data_path = "dataset/missing.jsonl"'))
    with pytest.raises(PresetError, match="count.data_path = 'dataset/missing.jsonl': file not found"):
        preflight(preset, "count.toml")
    save_preset(preset, tmp_path / "again.toml")
    assert json.dumps(load_preset(tmp_path / "again.toml").section("count").model_dump()) == json.dumps(
        {"steps": 6, "data_path": "dataset/missing.jsonl"})


def test_an_unregistered_stage_is_a_located_preset_error(tmp_path: Path) -> None:
    """Guards against a preset naming a stage nobody defined failing later, inside the run."""
    with pytest.raises(PresetError, match="unknown stage.*'count'"):
        load_preset(write_preset(tmp_path, "steps = 2"))


@dataclass(frozen=True)
class OtherNodesFirstProcess(World):
    """Rank 1 of 2, the first process of a node that does not host rank 0; rank 0's broadcast is given."""

    from_rank0: Any = None

    def broadcast(self, value: Any) -> Any:
        return self.from_rank0

    def barrier(self) -> None:
        return None


def test_a_node_without_rank_0_keeps_its_own_status_after_a_restart(count_stage, tmp_path: Path) -> None:
    """Guards against another node's run directory being left `queued` by a restart (its supervisor put it back to
    queued and nothing started it again) and its end then refused by the state machine, failing a job that had
    finished; and against that node writing status.json when it shares rank 0's directory."""
    own = create_run(load_preset(write_preset(tmp_path, "steps = 3")))
    node = Run(own)
    node.claim()  # what its supervisor does, then a relaunch after a failed attempt:
    node.restart(1)
    world = OtherNodesFirstProcess(rank=1, local_rank=0, size=2, from_rank0=(set(), "rank 0's directory"))
    result = run_stages(node, resume=True, listeners=[], world=world)
    status = read_status(own)
    assert result.state == "finished" and status["state"] == "finished"
    assert status["exit_reason"] == "this node's processes are done" and "stages_done" not in status
    assert not any(iter_events(own / "events.jsonl"))  # rank 0 alone writes events

    shared = Run(create_run(load_preset(write_preset(tmp_path, "steps = 3"))))
    shared.claim()
    same = OtherNodesFirstProcess(rank=1, local_rank=0, size=2, from_rank0=(set(), shared.status()["started_at"]))
    run_stages(shared, resume=False, listeners=[], world=same)
    assert read_status(shared.dir)["state"] == "queued"  # rank 0 writes this directory's status, not this node


class BareStage(Stage):
    name = "bare"

    def run(self, ctx: StageContext) -> StageResult:
        return StageResult(self.name, "finished")


def test_a_stage_without_settings_can_be_named_in_a_preset(tmp_path: Path) -> None:
    """Guards against a stage registered without a section being unknown to the preset's `stages` check (only a
    section put its name in the schema's stage order)."""
    register(BareStage())
    try:
        path = tmp_path / "bare.toml"
        path.write_text(f'name = "bare"\nstages = ["bare"]\nout_dir = "{tmp_path / "runs"}"\n', encoding="utf-8")
        assert run_pipeline(create_run(load_preset(path))).state == "finished"
        path.write_text(path.read_text() + "\n[bare]\nsetting = 1\n", encoding="utf-8")
        with pytest.raises(PresetError, match="unknown field 'setting'"):
            load_preset(path)
    finally:
        unregister("bare")
