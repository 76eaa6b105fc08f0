"""Stage 1: train a byte-level BPE tokenizer on the corpus, or adopt an existing Hugging Face tokenizer folder.

Produces run_dir/tokenizer (tokenizer.json + tokenizer_config.json), which every later stage reads. On
resume a tokenizer already published is kept. Under torchrun rank 0 makes it and every node receives
it over the process group, so nodes need no shared filesystem.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.atomic import publish_dir
from engine.config import Preset, resolve_path
from engine.errors import PresetError
from engine.events import EventLog, StageEndEvent, StageStartEvent
from engine.stages.base import Stage, StageContext, StageResult

if TYPE_CHECKING:
    from engine.train.distributed import World


def missing_input(source: str, field: str, value: str, what: str) -> PresetError:
    return PresetError(f"{source}: {field} = {value!r}: {what}. Fix the path in the preset or with --set {field}=...")


class TokenizerStage(Stage):
    name = "tokenizer"

    def preflight(self, preset: Preset, source: str) -> None:
        check_tokenizer_source(preset, source)

    def run(self, ctx: StageContext) -> StageResult:
        started = time.perf_counter()
        report = prepare_tokenizer(ctx.preset, ctx.run_dir, ctx.log, ctx.resume) if ctx.world.is_main else None
        share_tokenizer(ctx.world, ctx.run_dir)
        return StageResult(self.name, "finished", 1, 1, time.perf_counter() - started, metrics=report or {})


def check_tokenizer_source(preset: Preset, source: str) -> None:
    """The folder a tokenizer is adopted from has tokenizer files; the corpus it is trained on exists.
    Adopting opens only the folder (tokenizer.data_path, when there, just measures chars/token)."""
    cfg = preset.tokenizer
    if cfg.from_dir:
        from engine.data.tokenizer_files import TOKENIZER_FILES

        folder = resolve_path(cfg.from_dir)
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            what = "no tokenizer files there (tokenizer.json, tokenizer_config.json...)" if folder.is_dir() else "folder not found"
            raise missing_input(source, "tokenizer.from_dir", cfg.from_dir, what)
    elif not resolve_path(cfg.data_path).is_file():
        raise missing_input(source, "tokenizer.data_path", cfg.data_path, "file not found")


def prepare_tokenizer(preset: Preset, run_dir: Path, log: EventLog, resume: bool) -> dict | None:
    """Train (or adopt) the tokenizer into run_dir/tokenizer. Returns the report; None when a resume finds it made."""
    from engine.data.tokenizer import adopt_tokenizer, train_tokenizer

    out = run_dir / "tokenizer"
    if resume and (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file():
        return None
    cfg = preset.tokenizer
    log.emit(StageStartEvent(stage="tokenizer", total_steps=1, start_step=0, resumed=False))
    if cfg.from_dir:
        report = adopt_tokenizer(Path(cfg.from_dir), out, heldout_path=Path(cfg.data_path), heldout_lines=cfg.heldout_lines)
    else:
        report = train_tokenizer(
            Path(cfg.data_path), out, preset.model.vocab_size, heldout_lines=cfg.heldout_lines,
            max_train_chars=cfg.max_train_chars, model_max_length=cfg.model_max_length,
            on_bad_line=tokenizer_bad_line_rule(preset),
        )
    summary = report.to_dict()
    log.emit(StageEndEvent(stage="tokenizer", state="finished", step=1, total_steps=1, **summary))
    return summary


def tokenizer_bad_line_rule(preset: Preset) -> Literal["error", "skip"]:
    """tokenizer.on_bad_line, unless the tokenizer reads pretraining's own file and pretraining skips bad lines:
    then the tokenizer skips them too (stopping on a line the next stage will skip anyway helps no one)."""
    cfg = preset.tokenizer
    same_file = "pretrain" in preset.stages and resolve_path(cfg.data_path) == resolve_path(preset.pretrain.data_path)
    return "skip" if same_file and preset.pretrain.on_bad_line == "skip" else cfg.on_bad_line


def share_tokenizer(world: World, run_dir: Path) -> None:
    """Rank 0's run_dir/tokenizer on every node: sent over the process group (a few MB) and written by each
    node's first process where it is missing, so nodes need no shared filesystem."""
    if not world.distributed:
        return
    folder = run_dir / "tokenizer"
    files = world.broadcast({p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if world.is_main else None)
    if world.is_local_main and not world.is_main and not (folder / "tokenizer.json").is_file():
        tmp = run_dir / f".tokenizer.tmp-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        publish_dir(tmp, folder, keep_existing=True)
    world.barrier()  # every node has it before anyone reads it
