"""Stages 2 and 3: pretraining and SFT, one training loop (engine.train.loop) with different data and weights.

Reads its `[pretrain]` / `[sft]` section; starts from `from_weight`, else the previous stage's newest
checkpoint in this run, else random weights; produces checkpoints/<stage>/step_NNNNNN and `latest`.
Resumes from its own newest intact checkpoint. When the section names a `heldout_path`, the final
checkpoint answers those questions greedily and is scored by exact match (engine.eval.heldout).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.atomic import write_json_atomic
from engine.config import Preset, StageName, resolve_path
from engine.errors import CheckpointError, PresetError
from engine.events import EvalEvent, EventLog, WarningEvent
from engine.stages.base import Stage, StageContext, StageResult
from engine.stages.tokenizer import check_tokenizer_source, missing_input, prepare_tokenizer, share_tokenizer

if TYPE_CHECKING:
    from engine.checkpoints.checkpoint import Checkpoint


class TrainingStage(Stage):
    produces_weights = True

    def __init__(self, name: StageName) -> None:
        self.name = self.training = name  # `training`: the name as the loop's type knows it

    def preflight(self, preset: Preset, source: str) -> None:
        if "tokenizer" not in preset.stages and preset.tokenizer.from_dir:
            check_tokenizer_source(preset, source)  # adopted when this stage starts
        cfg = preset.stage(self.name)
        for name in ("data_path", "heldout_path"):
            value = getattr(cfg, name)
            if value and not resolve_path(value).is_file():
                raise missing_input(source, f"{self.name}.{name}", value, "file not found")
        try:
            from_weight_checkpoint(self.name, preset)
        except CheckpointError as error:
            raise PresetError(f"{source}: {error}") from None

    def run(self, ctx: StageContext) -> StageResult:
        from engine.train import loop  # looked up when called: the kill-anywhere harness patches loop.train_stage

        world, preset = ctx.world, ctx.preset
        init = world.broadcast(self.starting_weights(ctx) if world.is_main else None)
        if world.is_main:
            if not (ctx.tokenizer_dir / "tokenizer.json").is_file():
                adopt_missing_tokenizer(preset, ctx.run_dir, init, ctx.log)
        share_tokenizer(world, ctx.run_dir)
        if world.is_main:
            check_vocab(preset, ctx.tokenizer_dir, ctx.log)
        trained = loop.train_stage(self.training, preset, ctx.run_dir, ctx.tokenizer_dir, ctx.log, init_from=init,
                                   resume=ctx.resume, should_stop=ctx.should_stop, world=world)
        result = StageResult(self.name, trained.state, trained.step, trained.total_steps, trained.seconds,
                             trained.checkpoint, metrics={"final_loss": trained.final_loss, "eval_loss": trained.eval_loss,
                                                          "tokens_seen": trained.tokens_seen, **trained.extra})
        heldout = preset.stage(self.name).heldout_path
        if trained.state == "finished" and heldout and world.is_main and trained.checkpoint is not None:
            result.metrics["heldout"] = score_heldout(self.name, preset, ctx.run_dir, trained.checkpoint, trained.step,
                                                      Path(heldout), ctx.log)
        return result

    def starting_weights(self, ctx: StageContext) -> Checkpoint | None:
        """from_weight, else the previous stage's newest checkpoint in this run, else None (random init)."""
        if ctx.preset.stage(self.name).from_weight:
            return from_weight_checkpoint(self.name, ctx.preset)
        return ctx.previous_weights(self.name)


def from_weight_checkpoint(stage: str, preset: Preset) -> Checkpoint | None:
    """The checkpoint `<stage>.from_weight` names (architecture checked), or None when it is empty."""
    from engine.checkpoints.lookup import check_architecture, newest_matching_checkpoint, resolve_checkpoint
    from engine.config import TRAIN_STAGES

    spec = preset.stage(stage).from_weight
    if not spec:
        return None
    if spec == "latest":
        ckpt = newest_matching_checkpoint(preset.out_dir, "pretrain", preset.model)
    else:
        ckpt = resolve_checkpoint(spec, preset.out_dir, prefer=TRAIN_STAGES)
    check_architecture(ckpt, preset.model, f"{stage}.from_weight")
    return ckpt


def check_vocab(preset: Preset, tokenizer_dir: Path, log: EventLog) -> None:
    from engine.data.tokenizer import tokenizer_vocab_size

    size = tokenizer_vocab_size(tokenizer_dir)
    if size > preset.model.vocab_size:
        raise PresetError(
            f"the tokenizer in {tokenizer_dir} has {size} tokens but model.vocab_size is {preset.model.vocab_size}; "
            f"set model.vocab_size = {size} (or train a tokenizer of that size)"
        )
    if size < preset.model.vocab_size:
        log.emit(WarningEvent(message=f"tokenizer has {size} tokens, model.vocab_size is {preset.model.vocab_size}: "
                                         f"{preset.model.vocab_size - size} embedding rows stay unused"))


def adopt_missing_tokenizer(preset: Preset, run_dir: Path, init: Checkpoint | None, log: EventLog) -> None:
    """No tokenizer stage in this run: take the preset's from_dir, else the starting checkpoint's."""
    from engine.data.tokenizer_files import copy_tokenizer

    if preset.tokenizer.from_dir:
        prepare_tokenizer(preset, run_dir, log, resume=False)
    elif init is not None:
        copy_tokenizer(init.tokenizer_dir, run_dir / "tokenizer")
    else:  # config validation makes this unreachable; keep the message for hand-built presets
        raise PresetError("no tokenizer: add 'tokenizer' to stages or set tokenizer.from_dir")


def score_heldout(stage: str, preset: Preset, run_dir: Path, checkpoint: Path, step: int, path: Path,
                  log: EventLog) -> dict[str, Any]:
    """Greedy exact-match accuracy of the stage's final checkpoint on its held-out questions."""
    from engine.chat.session import ChatSession
    from engine.checkpoints.checkpoint import read_checkpoint
    from engine.eval.heldout import exact_match, read_heldout

    items = read_heldout(path)
    session = ChatSession(read_checkpoint(checkpoint), device=preset.runtime.device)
    report = exact_match(session, items)
    write_json_atomic(run_dir / f"heldout_{stage}.json", report)
    log.emit(EvalEvent(stage=stage, step=step, heldout_accuracy=report["accuracy"],
                       heldout_correct=report["correct"], heldout_total=report["total"], heldout_path=str(path)))
    return {k: report[k] for k in ("accuracy", "correct", "total", "by_kind")}
