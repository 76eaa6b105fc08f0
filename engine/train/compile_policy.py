"""Whether a stage runs torch.compile'd, decided from evidence, and the forward pass that follows it.

`runtime.compile = "on" | "off"` is obeyed. With "auto":
- CUDA compiles (2.2-2.3x on an H200, bench/RESULTS.md); other non-CPU devices stay eager.
- On a CPU the gain depends on the CPU (1.6x HF compiled vs 1.13x eager on an AMX Xeon, but only
  +15% on an AMD EPYC without AMX) and compiling costs 15-90 s, so the machine's tuning record
  (engine/hardware/tuning.py) is asked what compiling did here before for this model and batch shape. With
  an entry, the stage compiles when its remaining steps earn the compile time back. Without one, a
  stage long enough to possibly earn it back measures for itself: it times TRIAL_STEPS eager steps,
  compiles, times TRIAL_STEPS compiled steps, keeps the faster for the rest of the stage and records
  the figures for the next run. Short stages stay eager.

Numerics do not depend on the choice beyond float rounding (tests/engine/test_compile.py), so
switching mid-stage changes speed, not what is learned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from engine.config import ModelConfig
from engine.hardware.tuning import TuningRecord

Mode = Literal["eager", "compiled", "trial"]

COMPILE_PAYS_BACK_S = 300.0  # below this much estimated eager training, a first measurement does not pay
EAGER_CPU_MFU = 0.3  # what eager training reaches on a CPU, for that estimate (bench/RESULTS.md)
TRIAL_STEPS = 5  # timed steps of each kind in a trial (after one warm-up step of each); the fastest of 5 keeps
# a busy moment on a shared host from deciding a stage of hours (medians of 3 let it pick eager in a benchmark)
MIN_GAIN = 0.03  # a compiled step must be at least this much faster to be worth keeping


def compile_key(model: ModelConfig, dtype: str, batch: int, seq: int, accumulation: int, checkpointing: bool,
                attention: str) -> str:
    """The record entry for one model and step shape (what compiling's gain depends on)."""
    moe = f"|moe{model.num_experts}x{model.num_experts_per_tok}+{model.num_shared_experts}" if model.use_moe else ""
    return (f"compile|{dtype}|V{model.vocab_size}|C{model.hidden_size}|L{model.num_hidden_layers}|"
            f"h{model.num_attention_heads}|kv{model.num_key_value_heads}|I{model.intermediate_size}{moe}|"
            f"B{batch}x{accumulation}|T{seq}|ckpt{int(checkpointing)}|attn-{attention}")


def decide(setting: str, device_type: str, known: dict[str, Any] | None, remaining_steps: int,
           eager_seconds_estimate: float | None) -> tuple[Mode, str]:
    """(mode, reason for stage_start): pure, so every branch is tested directly."""
    if setting in ("on", "off"):
        return ("compiled" if setting == "on" else "eager"), f"runtime.compile = {setting}"
    if device_type == "cuda":
        return "compiled", "auto: on CUDA compiling pays back within minutes"
    if device_type != "cpu":
        return "eager", f"auto: not compiled on {device_type}"
    if known is not None:
        if known.get("failed"):
            return "eager", f"auto: compiling failed on this machine before ({known['failed']})"
        eager_s, compiled_s, compile_s = known["eager_s"], known["compiled_s"], known["compile_s"]
        measured = f"measured here before: compiled {compiled_s:.3f} s/step vs eager {eager_s:.3f} s/step"
        saving = eager_s - compiled_s
        if saving < MIN_GAIN * eager_s:
            return "eager", f"auto: {measured}, no gain"
        payback_steps = compile_s / saving
        if remaining_steps > payback_steps:
            return "compiled", (f"auto: {measured} ({eager_s / compiled_s:.2f}x); compiling ({compile_s:.0f} s) "
                                f"pays back after {payback_steps:,.0f} of {remaining_steps:,} steps")
        return "eager", (f"auto: {measured}; compiling ({compile_s:.0f} s) would pay back after "
                         f"{payback_steps:,.0f} steps, this stage has {remaining_steps:,}")
    if remaining_steps < 4 * (TRIAL_STEPS + 1):
        return "eager", f"auto: {remaining_steps} steps, too few to measure compiling"
    if eager_seconds_estimate is not None and eager_seconds_estimate <= COMPILE_PAYS_BACK_S:
        return "eager", f"auto: about {eager_seconds_estimate:.0f} s of CPU training, too short for compiling to pay back"
    length = f"about {eager_seconds_estimate / 60:.0f} min of CPU training" if eager_seconds_estimate else "a long stage"
    return "trial", (f"auto: {length} and no measurement for this shape on this machine yet: timing "
                     f"{TRIAL_STEPS} eager and {TRIAL_STEPS} compiled steps, then keeping the faster")


class CompiledForward:
    """The forward pass the training loop calls, eager or torch.compile'd as decided.

    A compile error surfaces lazily, on the first compiled call: until one compiled call has
    succeeded, an error there falls back to eager with one warning (and is recorded, so "auto" does
    not try again on this machine). After that, an error is an error (an out-of-memory at step
    10,000 is not a compiler problem). In "trial" mode the loop reports each step's seconds through
    `step_done` and the switch happens after the eager timings."""

    def __init__(self, model: torch.nn.Module, mode: Mode, *, note: Callable[[str, dict[str, Any]], object],
                 warn: Callable[[str], object], record: TuningRecord | None = None, key: str = "") -> None:
        self.eager = model
        self.note, self.warn, self.record, self.key = note, warn, record, key
        self.trial = mode == "trial"
        self.compiled: Callable | None = torch.compile(model) if mode == "compiled" else None
        self.proven = False  # one compiled call has succeeded
        self.times: list[float] = []

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        if self.proven:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a compiler failure must degrade, not end the run
            self.compiled, self.trial = None, False
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
            self.warn(f"torch.compile failed ({reason}); training eagerly")
            if self.record is not None:
                self.record.put(self.key, {"failed": reason})
            return self.eager(*args, **kwargs)
        self.proven = True
        return out

    def step_done(self, seconds: float) -> None:
        """One optimizer step took `seconds` (a CPU step is synchronous, so wall time is its cost)."""
        if not self.trial:
            return
        self.times.append(seconds)
        # Step 0 warms eager up, 1..T are timed eager; step T+1 compiles, T+2..2T+1 are timed compiled.
        if len(self.times) == TRIAL_STEPS + 1:
            self.compiled = torch.compile(self.eager)
        elif len(self.times) == 2 * TRIAL_STEPS + 2:
            self._conclude()

    def _conclude(self) -> None:
        self.trial = False
        if self.compiled is None:  # compiling failed during the trial: already warned and recorded
            return
        # The fastest of each: another process on the machine only ever adds time to a step, so the
        # minimum is the best estimate of what each mode costs (timeit's rule).
        eager_s = min(self.times[1:TRIAL_STEPS + 1])
        compiled_s = min(self.times[TRIAL_STEPS + 2:])
        compile_s = max(0.0, self.times[TRIAL_STEPS + 1] - compiled_s)
        figures = {"eager_s": round(eager_s, 4), "compiled_s": round(compiled_s, 4), "compile_s": round(compile_s, 1)}
        keep = compiled_s < (1 - MIN_GAIN) * eager_s
        if not keep:
            self.compiled = None
        if self.record is not None:
            self.record.put(self.key, figures)
        verdict = "keeping compiled" if keep else "back to eager"
        self.note(f"compile measured: {compiled_s:.3f} s/step compiled vs {eager_s:.3f} eager "
                  f"({eager_s / compiled_s:.2f}x), compiling took {compile_s:.0f} s: {verdict}",
                  {"compile": keep, **figures})
