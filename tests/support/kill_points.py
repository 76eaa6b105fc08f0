"""`python tests/support/kill_points.py RUN_DIR MARKER POINT STAGE AT [--resume]`: run RUN_DIR as a detached run
does (`python -m engine RUN_DIR [--resume]`), except that one place in it, POINT, is armed: the first time the
run gets there in STAGE at step AT or later, it writes MARKER (JSON: the point, stage, step, pid and what it
left half-done) and waits there to be killed.

Why: a kill at a random instant of a test-sized run lands in a training step almost every time (a tokenizer,
a token cache or a checkpoint of this size is written in milliseconds). Parking the run at a chosen point makes
each kill land where it was meant to, and leaves on disk exactly what a kill at that instant of the real work
leaves: a file cut off half-way is really cut off, a folder built but not yet renamed is really unpublished,
an old checkpoint half-deleted is really half-deleted. Everything before and after the point is the engine's
own code.

POINTS names the places, "<phase>/<point>". AT counts steps for the phases inside a training stage; for
tokenizer/reading it is the number of corpus records the tokenizer has read. Points after which the phase's
work is kept (the tokenizer published, `latest` moved) are in KEEPS: a later kill cannot land in the same
phase of the same stage again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

POINTS: dict[str, tuple[str, ...]] = {
    "tokenizer": ("reading", "writing", "published"),  # training on the corpus / tokenizer.json written / renamed
    "cache": ("tokenizing", "tokens written", "publishing"),  # a batch written / every token / meta.json, not renamed
    "step": ("forward", "gradients", "updated"),  # inside the forward / before clipping / weights updated
    "eval": ("loss", "sample"),  # after one held-out batch / before the greedy sample
    "checkpoint": ("model file", "trainer file", "state.json", "published", "pruning"),
}
KEEPS = {"tokenizer/published", "checkpoint/pruning"}


class Armed:
    """Where the run is (stage, step) and whether the armed point has been reached."""

    def __init__(self, marker: Path, point: str, stage: str, at: int) -> None:
        self.marker, self.point, self.stage, self.at = marker, point, stage, at
        self.where: dict[str, Any] = {"stage": None, "step": 0}
        self.eval_batches = 0

    def here(self) -> bool:
        return self.where["stage"] == self.stage and self.where["step"] >= self.at

    def stall(self, **detail: Any) -> None:
        note = {"point": self.point, "stage": self.where["stage"] or self.stage, "step": self.where["step"],
                "pid": os.getpid(), **detail}
        part = self.marker.with_suffix(".part")
        part.write_text(json.dumps(note), encoding="utf-8")
        os.replace(part, self.marker)  # the test never reads half a marker
        while True:
            time.sleep(60)  # here until SIGKILL


def install(armed: Armed) -> None:
    """Patch the engine so that `armed.point` stalls (module attributes, looked up when called)."""
    import torch

    import engine.checkpoints.checkpoint as checkpoint
    import engine.data.cache_build as cache_build
    import engine.data.token_cache as token_cache
    import engine.data.tokenizer as tokenizer
    import engine.train.evaluation as evaluation
    import engine.train.loop as loop
    from engine.model.transformer import CausalLM

    where = armed.where
    real_train_stage, real_lr_at = loop.train_stage, loop.lr_at

    def train_stage(stage: str, *args: Any, **kwargs: Any) -> Any:
        where.update(stage=stage, step=0)
        return real_train_stage(stage, *args, **kwargs)

    def lr_at(step: int, *args: Any) -> float:
        where["step"] = step + 1  # the step about to run, then the one just done (evals and saves follow it)
        return real_lr_at(step, *args)

    loop.train_stage, loop.lr_at = train_stage, lr_at
    phase, point = armed.point.split("/")

    if armed.point == "tokenizer/reading":
        real_iter = tokenizer.iter_jsonl

        def iter_jsonl(*args: Any, **kwargs: Any) -> Any:
            for n, record in enumerate(real_iter(*args, **kwargs)):
                if n == armed.at and "stop_line" in kwargs:  # the training stream, not the held-out measure
                    armed.stall(records_read=n)
                yield record

        tokenizer.iter_jsonl = iter_jsonl
    elif armed.point == "tokenizer/writing":
        tokenizer.write_json_atomic = lambda path, payload: armed.stall(tmp=str(Path(path).parent))
    elif armed.point == "tokenizer/published":
        tokenizer.load_tokenizer = lambda directory: armed.stall(published=str(directory))
    elif phase == "cache":
        stall_in_cache(armed, point, cache_build, token_cache)
    elif phase == "step":
        if point == "forward":
            real_forward = CausalLM.forward

            def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
                if self.training and torch.is_grad_enabled() and armed.here():
                    armed.stall()
                return real_forward(self, *args, **kwargs)

            CausalLM.forward = forward  # type: ignore[method-assign]
        elif point == "gradients":
            real_clip = torch.nn.utils.clip_grad_norm_

            def clip(*args: Any, **kwargs: Any) -> Any:
                if armed.here():
                    armed.stall()
                return real_clip(*args, **kwargs)

            torch.nn.utils.clip_grad_norm_ = clip
        else:
            real_step = loop.train_step

            def train_step(*args: Any, **kwargs: Any) -> Any:
                out = real_step(*args, **kwargs)
                if armed.here():
                    armed.stall()
                return out

            loop.train_step = train_step
    elif phase == "eval":
        stall_in_eval(armed, point, loop, evaluation)
    else:
        stall_in_checkpoint(armed, point, checkpoint)


def stall_in_cache(armed: Armed, point: str, cache_build: Any, token_cache: Any) -> None:
    if point == "tokenizing":
        real_flush = cache_build.RangeEncoder._flush

        def flush(self: Any, batch: Any, result: Any, tok_out: Any, mask_out: Any) -> bool:
            done = real_flush(self, batch, result, tok_out, mask_out)
            if armed.where["stage"] == armed.stage:  # one batch of records written, more to come
                armed.stall(tmp=str(Path(tok_out.name).parent), docs=len(result.lengths))
            return done

        cache_build.RangeEncoder._flush = flush
    elif point == "tokens written":
        real_write = cache_build.write_ranges

        def write_ranges(encoder: Any, tmp: Path, *args: Any) -> Any:
            out = real_write(encoder, tmp, *args)
            if armed.where["stage"] == armed.stage:
                armed.stall(tmp=str(tmp))
            return out

        cache_build.write_ranges = write_ranges
    else:
        real_publish = token_cache.publish_dir

        def publish_dir(tmp: Path, final: Path, **kwargs: Any) -> bool:
            if armed.where["stage"] == armed.stage:
                armed.stall(tmp=str(tmp), final=str(final))
            return real_publish(tmp, final, **kwargs)

        token_cache.publish_dir = publish_dir


def stall_in_eval(armed: Armed, point: str, loop: Any, evaluation: Any) -> None:
    if point == "loss":
        real_evaluate, real_collate = loop.evaluate, evaluation.collate

        def evaluate(*args: Any, **kwargs: Any) -> Any:
            armed.eval_batches = 0
            return real_evaluate(*args, **kwargs)

        def collate(batch: Any) -> Any:
            armed.eval_batches += 1
            if armed.eval_batches == 2 and armed.here():  # one held-out batch scored
                armed.stall()
            return real_collate(batch)

        loop.evaluate, evaluation.collate = evaluate, collate
    else:
        real_sample = loop.emit_sample

        def emit_sample(*args: Any, **kwargs: Any) -> Any:
            if armed.here():
                armed.stall()
            return real_sample(*args, **kwargs)

        loop.emit_sample = emit_sample


def stall_in_checkpoint(armed: Armed, point: str, checkpoint: Any) -> None:
    if point in ("model file", "trainer file"):
        from safetensors.torch import save

        real_save_file, name = checkpoint.save_file, point.replace(" file", ".safetensors")

        def save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
            if Path(filename).name != name or not armed.here():
                return real_save_file(tensors, filename, metadata=metadata)
            data = save(tensors, metadata=metadata)
            with open(filename, "wb") as handle:
                handle.write(data[: len(data) // 2])
            armed.stall(tmp=str(Path(filename).parent), written=len(data) // 2, size=len(data))

        checkpoint.save_file = save_file
    elif point == "state.json":
        real_write_json = checkpoint.write_json_atomic

        def write_json_atomic(path: Path, payload: Any) -> None:
            if not armed.here():
                return real_write_json(path, payload)
            text = json.dumps(payload, indent=2).encode("utf-8")
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # as engine.atomic names it
            temporary.write_bytes(text[: len(text) // 2])
            armed.stall(tmp=str(path.parent))

        checkpoint.write_json_atomic = write_json_atomic
    elif point == "published":
        real_point = checkpoint.point_symlink

        def point_symlink(link: Path, target_name: str) -> None:
            if armed.here():
                armed.stall(published=str(link.parent / target_name))
            real_point(link, target_name)

        checkpoint.point_symlink = point_symlink
    else:  # inside the real pruning: the first folder it deletes is cut off half-way, in the directory's order
        real_prune, pruning = checkpoint.prune_checkpoints, []

        def prune_checkpoints(stage_dir: Path, keep: int) -> None:
            if armed.here():
                pruning.append(stage_dir)
            real_prune(stage_dir, keep)
            if pruning:
                armed.stall(pruning=None, removed=[])  # nothing to prune at this save: parked after it

        def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
            if not pruning:
                return shutil.rmtree(path, *args, **kwargs)
            entries = list(os.scandir(path))
            for entry in entries[: max(1, len(entries) // 2)]:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            armed.stall(pruning=str(path), removed=[entry.name for entry in entries[: max(1, len(entries) // 2)]])

        stalling_shutil = types.ModuleType("shutil")
        stalling_shutil.__dict__.update(vars(shutil))
        stalling_shutil.rmtree = rmtree  # type: ignore[attr-defined]
        checkpoint.prune_checkpoints, checkpoint.shutil = prune_checkpoints, stalling_shutil


def main(run_dir: str, marker: str, point: str, stage: str, at: str, *flags: str) -> int:
    from engine.__main__ import main as run

    install(Armed(Path(marker), point, stage, int(at)))
    return run([run_dir, *flags])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
