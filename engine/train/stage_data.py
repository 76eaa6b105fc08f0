"""A stage's data on its way to the training step: the token cache, its blocks, the batches.

`make_blocks` builds (or reuses) the stage's token cache, reporting progress as events, and cuts it
into fixed-length blocks; `batch_stream` turns blocks and a resumable sampler into an endless stream
of (inputs, targets) batches across epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from engine.config import Preset, StageName
from engine.data.blocks import EpochSampler, PretrainBlocks, SFTBlocks
from engine.data.jsonl import Kind
from engine.data.token_cache import build_token_cache
from engine.events import CacheProgressEvent, EventLog, NoteEvent, WarningEvent
from engine.train.distributed import World
from engine.train.step import Batch


def make_blocks(stage: StageName, preset: Preset, tokenizer_dir: Path, log: EventLog, world: World | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[PretrainBlocks | SFTBlocks, dict[str, Any]]:
    """The stage's blocks and what stage_start reports about its data. Under torchrun the first process of
    each node builds the token cache while the node's other processes wait, then they all open it (the
    cache is the same bytes wherever it is built, so nodes with their own disks agree).

    A one-process run waiting for another process's build of the same cache gives the wait up when
    `should_stop()` (engine.locks.WaitCancelled): a stop must not wait for someone else's tokenization."""
    world = world or World.single()
    cfg = preset.stage(stage)
    kind: Kind = "pretrain" if stage == "pretrain" else "sft"
    started = time.perf_counter()
    workers = preset.runtime.data_workers

    def build() -> Any:
        return build_token_cache(
            Path(cfg.data_path), tokenizer_dir, kind, Path(preset.runtime.cache_dir), on_bad_line=cfg.on_bad_line,
            stage=stage, workers=None if workers == "auto" else workers, progress=CacheProgress(stage, log),
            on_wait=lambda message: log.emit(NoteEvent(stage=stage, message=message)),
            cancelled=should_stop if not world.distributed else None,  # ranks leave together, through the step's vote
        )

    if world.is_local_main:
        cache = build()
    world.barrier()  # the node's builder is done (a builder that fails ends the job through torchrun)
    if not world.is_local_main:
        cache = build()  # opens the cache just published
    meta = dict(cache.meta)
    skipped = meta.get("stats", {}).get("skipped", 0)
    if skipped:
        log.emit(WarningEvent(stage=stage, message=f"skipped {skipped} malformed line(s) of {cfg.data_path}"))
    blocks = PretrainBlocks(cache, cfg.max_seq_len) if kind == "pretrain" else SFTBlocks(cache, cfg.max_seq_len)
    info = {
        "data_path": cfg.data_path,
        "n_docs": cache.n_docs,
        "n_tokens": cache.n_tokens,
        "blocks": len(blocks),
        "cache_seconds": round(time.perf_counter() - started, 3),
        "from_cache": bool(getattr(cache, "from_cache", False)),
    }
    if isinstance(blocks, SFTBlocks):  # kind == "sft"
        info["padding_fraction"] = round(float(blocks.padding_fraction), 4)
    return blocks, info


class CacheProgress:
    """Reports a token-cache build as `cache_progress` events (bytes done, MB/s, ETA): on a 10 GB file it
    is minutes of a run. At most one event per `every` seconds, plus the last."""

    def __init__(self, stage: str, log: EventLog, every: float = 2.0) -> None:
        self.stage, self.log, self.every = stage, log, every
        self.started = time.perf_counter()
        self.last = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        self.log.emit(CacheProgressEvent(stage=self.stage, bytes_done=done, bytes_total=total, mb_per_s=rate / 1e6,
                                         eta_s=(total - done) / rate if rate > 0 else None))


def collate(batch: list[Batch]) -> Batch:
    inputs, targets = zip(*batch)
    return torch.stack(inputs), torch.stack(targets)


def batch_stream(blocks: torch.utils.data.Dataset, sampler: EpochSampler, *, num_workers: int, pin: bool,
                 seed: int) -> Iterator[Batch]:
    """Batches without end: each pass over the loader is one epoch of the sampler, which carries on
    from where it stands (a resumed run's position)."""
    # A private generator: otherwise creating the iterator draws from the global RNG, and a resumed
    # run (which restores the global RNG first) would get different dropout masks.
    loader = torch.utils.data.DataLoader(
        blocks, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate, pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
    )
    while True:
        yield from loader
