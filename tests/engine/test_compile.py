"""The torch.compile switch: when auto turns it on, that compiled training matches eager, and that a
compiler failure degrades to eager with a warning instead of killing the run."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from engine.hardware.tuning import TuningRecord
from engine.runs.pipeline import run_pipeline
from engine.runs.run_dir import create_run
from engine.train import compile_policy
from engine.train.compile_policy import COMPILE_PAYS_BACK_S, TRIAL_STEPS, decide


def broken_compile(model, *args, **kwargs):
    """A torch.compile whose compiled model fails on its first call, as a broken toolchain does."""
    def fails(*a, **k):
        raise RuntimeError("simulated inductor failure")
    return fails


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_auto_decides_from_what_was_measured_on_this_machine():
    """Guards the default: compiling must be chosen where it was measured to pay back within the stage
    and not where it gave nothing, failed, or cannot earn its compile time back; a CPU stage with no
    measurement measures only when it is long enough; on/off are obeyed as given."""
    long_s, short_s = 2 * COMPILE_PAYS_BACK_S, 0.5 * COMPILE_PAYS_BACK_S
    assert decide("auto", "cuda", None, 10, short_s)[0] == "compiled"
    assert decide("auto", "mps", None, 10_000, long_s)[0] == "eager"
    assert decide("on", "cpu", None, 10, short_s)[0] == "compiled"
    assert decide("off", "cuda", None, 10_000, long_s)[0] == "eager"
    mode, reason = decide("auto", "cpu", None, 1_000, short_s)
    assert mode == "eager" and "too short" in reason
    assert decide("auto", "cpu", None, 1_000, long_s)[0] == "trial"
    assert decide("auto", "cpu", None, 1_000, None)[0] == "trial"  # peak unknown: measure rather than guess
    assert decide("auto", "cpu", None, 2 * TRIAL_STEPS, long_s)[0] == "eager"  # too few steps to time both
    pays = {"eager_s": 1.0, "compiled_s": 0.8, "compile_s": 60.0}  # 0.2 s/step saved: pays back after 300
    mode, reason = decide("auto", "cpu", pays, 1_000, short_s)
    assert mode == "compiled" and "pays back after 300 of 1,000 steps" in reason
    mode, reason = decide("auto", "cpu", pays, 200, long_s)
    assert mode == "eager" and "this stage has 200" in reason
    mode, reason = decide("auto", "cpu", {"eager_s": 1.0, "compiled_s": 0.99, "compile_s": 60.0}, 10**6, long_s)
    assert mode == "eager" and "no gain" in reason
    mode, reason = decide("auto", "cpu", {"failed": "RuntimeError: boom"}, 10**6, long_s)
    assert mode == "eager" and "boom" in reason


@pytest.mark.slow
def test_a_first_long_stage_measures_compiling_records_it_and_the_next_run_reuses_it(make_preset, monkeypatch):
    """Guards the evidence loop on the real trainer: a stage with no measurement times eager and
    compiled steps, keeps the faster (here eager: the stand-in compiled model is made slower), writes
    the figures to the machine's record, and the next run decides from the record without a trial."""
    def slow_compile(model, *args, **kwargs):
        def slower(*a, **k):
            time.sleep(0.05)  # a fixed sleep on purpose: step time is what the trial measures
            return model(*a, **k)
        return slower

    monkeypatch.setattr(torch, "compile", slow_compile)
    monkeypatch.setattr(compile_policy, "COMPILE_PAYS_BACK_S", 0.0)  # every stage counts as long
    runs = []
    for name in ("first", "second"):
        preset = make_preset(name=name, stages=["tokenizer", "pretrain"], pretrain={"max_steps": 24})
        run_dir = create_run(preset)
        run_pipeline(run_dir)
        runs.append(events(run_dir))
    first, second = runs
    start = next(e for e in first if e["kind"] == "stage_start" and e["stage"] == "pretrain")
    assert start["compile_mode"] == "trial" and "no measurement" in start["compile_reason"]
    notes = [e for e in first if e["kind"] == "note"]
    figures = notes[0]["figures"]
    assert len(notes) == 1 and figures["compile"] is False and "back to eager" in notes[0]["message"]
    assert figures["compiled_s"] > figures["eager_s"]
    entries = json.loads((Path(preset.runtime.cache_dir) / "tuning.json").read_text())
    (machine,) = entries.values()
    (recorded,) = [v for k, v in machine.items() if k.startswith("compile|")]
    assert recorded == {k: figures[k] for k in ("eager_s", "compiled_s", "compile_s")}
    start = next(e for e in second if e["kind"] == "stage_start" and e["stage"] == "pretrain")
    assert start["compile_mode"] == "eager" and "measured here before" in start["compile_reason"]
    assert not [e for e in second if e["kind"] == "note"]
    assert [e["step"] for e in first if e["kind"] == "step"] == list(range(1, 25))


def test_a_compiler_that_fails_during_an_auto_trial_is_recorded_and_not_tried_again(make_preset, monkeypatch):
    """Guards "auto" against retrying a broken toolchain at every run: the failure is recorded."""
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(compile_policy, "COMPILE_PAYS_BACK_S", 0.0)
    preset = make_preset(stages=["tokenizer", "pretrain"], pretrain={"max_steps": 24})
    run_dir = create_run(preset)
    run_pipeline(run_dir)
    assert any("simulated inductor failure" in e["message"] for e in events(run_dir) if e["kind"] == "warning")
    record = TuningRecord(Path(preset.runtime.cache_dir))
    mode, reason = decide("auto", "cpu", record.get(_only_compile_key(record)), 10**6, None)
    assert mode == "eager" and "failed on this machine before" in reason


def _only_compile_key(record: TuningRecord) -> str:
    entries = json.loads(record.path.read_text())[record.machine]
    (key,) = [k for k in entries if k.startswith("compile|")]
    return key


def test_errors_after_a_successful_compiled_call_are_not_swallowed():
    """Guards against the old fallback that turned any later error (an out-of-memory at step 10,000)
    into "compile failed; training eagerly": once a compiled call succeeded, errors propagate."""
    calls = []

    class Flaky(torch.nn.Module):
        def forward(self, x):
            calls.append(x)
            if len(calls) > 1:
                raise RuntimeError("out of memory")
            return x

    from engine.train.compile_policy import CompiledForward

    warnings: list[str] = []
    forward = CompiledForward(Flaky(), "eager", note=lambda m, f: None, warn=warnings.append)
    forward.compiled = forward.eager  # stand-in for a compiled module that works once
    assert forward(torch.ones(1)) is not None
    with pytest.raises(RuntimeError, match="out of memory"):
        forward(torch.ones(1))
    assert warnings == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_training_matches_eager(make_preset):
    """Guards the compiled path end to end on the real loop: the custom autograd kernels, the fused
    loss and grouped attention trace without breaking numerics (same losses as eager to 1e-3)."""
    losses = {}
    for mode in ("off", "on"):
        preset = make_preset(name=f"compile-{mode}", stages=["tokenizer", "pretrain"],
                             runtime={"compile": mode}, pretrain={"max_steps": 4})
        run_dir = create_run(preset)
        run_pipeline(run_dir)
        log = events(run_dir)
        start = next(e for e in log if e["kind"] == "stage_start" and e["stage"] == "pretrain")
        assert start["compile"] is (mode == "on") and start["compile_mode"] == ("compiled" if mode == "on" else "eager")
        assert not [e for e in log if e["kind"] == "warning" and "compile" in e["message"]]
        losses[mode] = [e["loss"] for e in log if e["kind"] == "step"]
    assert losses["on"] == pytest.approx(losses["off"], abs=1e-3)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(make_preset, monkeypatch):
    """Guards against a broken toolchain (no compiler, an inductor bug) killing a long run at step 1."""
    monkeypatch.setattr(torch, "compile", broken_compile)
    preset = make_preset(stages=["tokenizer", "pretrain"], runtime={"compile": "on"}, pretrain={"max_steps": 3})
    run_dir = create_run(preset)
    run_pipeline(run_dir)
    log = events(run_dir)
    warnings = [e["message"] for e in log if e["kind"] == "warning"]
    assert any("simulated inductor failure" in w and "eagerly" in w for w in warnings)
    assert [e["step"] for e in log if e["kind"] == "step"] == [1, 2, 3]
