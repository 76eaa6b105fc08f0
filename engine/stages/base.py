"""The stage protocol: what every stage of a run (tokenizer, pretrain, SFT, and the ones to come) is to the pipeline.

A stage is one object behind one interface:

- what it reads from the preset: its `[name]` section (`Preset.section(name)`), checked by `preflight`
  before anything is launched (files that must exist, checkpoints it starts from);
- what it produces: its outputs in the run directory (`run_dir/tokenizer`, `checkpoints/<name>/...`);
  a stage whose `produces_weights` is true leaves checkpoints the next stage may start from
  (`StageContext.previous_weights`);
- how it resumes: `run(ctx)` with `ctx.resume` set continues from what it left (the pipeline skips a
  stage already done; a stage half-done picks up from its own newest checkpoint);
- what it reports: events on `ctx.log` (stage_start ... stage_end) and the `StageResult` it returns;
- what it needs from the stage before: it asks the context (the tokenizer folder, the previous
  stage's weights), never another stage's internals.

Under torchrun every rank calls `run` with the same context but its own `world`; on ranks other than 0
the log is silent and nothing is written to the run directory (a stage shares what rank 0 decided
through `ctx.world.broadcast`).

Adding a stage is a module with a Stage subclass and, when it has settings, a pydantic section model,
both given to `register`; the pipeline needs no edit (tests/engine/test_stage_protocol.py does exactly this).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from engine.config import EXTRA_SECTIONS, STAGE_ORDER, Preset, register_stage_section, stage_order
from engine.events import EventLog

if TYPE_CHECKING:
    from engine.checkpoints.checkpoint import Checkpoint
    from engine.train.distributed import World

# How a stage ends when it returns (a failure raises); the pipeline turns it into the run's state.
StageOutcome = Literal["finished", "stopped"]


@dataclass
class StageResult:
    stage: str
    state: StageOutcome
    step: int = 0
    total_steps: int = 0
    seconds: float = 0.0
    checkpoint: Path | None = None  # the weights the stage ended with, when it produces weights
    metrics: dict[str, Any] = field(default_factory=dict)  # what the summary shows: losses, a tokenizer's report ...


@dataclass
class StageContext:
    """What a stage gets from the pipeline: the run's frozen preset and directory, where to report, the
    process group, and whether to resume."""

    run_dir: Path
    preset: Preset
    log: EventLog  # silent on ranks other than 0
    world: World
    resume: bool
    should_stop: Callable[[], bool]  # control/stop or a signal; first true also marks the run stopping

    @property
    def tokenizer_dir(self) -> Path:
        return self.run_dir / "tokenizer"

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "checkpoints" / name

    def previous_weights(self, name: str) -> Checkpoint | None:
        """The newest complete checkpoint of the nearest stage before `name` in this run that produces
        weights (pretraining's, for SFT), or None."""
        from engine.checkpoints.checkpoint import latest_checkpoint

        earlier = self.preset.stages[: self.preset.stages.index(name)] if name in self.preset.stages else []
        for before in reversed(earlier):
            if stage_named(before).produces_weights:
                return latest_checkpoint(self.stage_dir(before))
        return None


class Stage(ABC):
    """One stage of a run; see the module docstring for the protocol."""

    name: str
    produces_weights: bool = False

    def preflight(self, preset: Preset, source: str) -> None:
        """Check what the stage will read before anything is launched; PresetError names file and field.
        A stage that reads nothing it could check first keeps this default."""
        return None

    @abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Do the stage (or continue it, when ctx.resume) until done or ctx.should_stop()."""


_STAGES: dict[str, Stage] = {}


class NoSettings(BaseModel):
    """The section of a stage that has no settings: `[name]` may be absent or empty."""

    model_config = ConfigDict(extra="forbid")


def register(stage: Stage, section: type[BaseModel] | None = None) -> None:
    """Make `stage` runnable by name; `section` is the model of its `[name]` preset section (for a stage outside the
    built-in schema; none: it takes no settings). A stage registered again replaces the earlier one.

    The registry is the process's own: a detached run and every torchrun rank import engine.stages afresh, so a
    stage meant to run there is registered in engine/stages/__init__.py, not by the code that launches it."""
    if stage.name not in STAGE_ORDER:
        register_stage_section(stage.name, section or NoSettings)
    _STAGES[stage.name] = stage


def unregister(name: str) -> None:
    """Forget a registered stage and its section (tests that define their own)."""
    _STAGES.pop(name, None)
    EXTRA_SECTIONS.pop(name, None)


def stage_named(name: str) -> Stage:
    if name not in _STAGES:
        raise KeyError(f"no stage {name!r}; stages are {', '.join(stage_order())}")
    return _STAGES[name]
