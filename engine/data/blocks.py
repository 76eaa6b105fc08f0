"""Fixed-shape training blocks from a token cache, the train/eval split, and a resumable sampler.

`PretrainBlocks` cuts the token stream into windows (no padding at all); `SFTBlocks` packs whole
conversations into blocks and keeps their loss masks; `EpochSampler` shuffles per epoch from
(seed, epoch) alone, so a restarted run recomputes exactly the order it was in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from engine.data.token_cache import TokenCache
from engine.errors import DataError

# The target of a position that carries no loss (prompts, padding): torch's cross_entropy default, which
# the engine's loss kernel (engine/model/kernels.py) honours too.
IGNORE_INDEX = -100

# --------------------------------------------------------------------------------------------
# Fixed-shape blocks


class PretrainBlocks(torch.utils.data.Dataset):
    """The token stream cut into seq_len windows; every position is a target, nothing is padding."""

    def __init__(self, cache: TokenCache, seq_len: int):
        self.cache, self.seq_len = cache, seq_len
        self.n_blocks = max(0, (cache.n_tokens - 1) // seq_len)
        if self.n_blocks == 0:
            raise DataError(f"the corpus has {cache.n_tokens} tokens, too few for one block of {seq_len}; "
                             "lower pretrain.max_seq_len or add data to pretrain.data_path")

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n_blocks:
            raise IndexError(i)
        start = i * self.seq_len
        window = torch.from_numpy(self.cache.tokens[start : start + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]  # (seq_len,), (seq_len,)


def pack_sequential(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Block boundaries in document indices: block b holds docs [starts[b], starts[b+1]).

    Documents stay whole and in order; a document that does not fit in the current block opens a new one.
    A document longer than `capacity` gets a block of its own (and is truncated there).
    """
    starts = [0]
    used = 0
    for i, n in enumerate(lengths.tolist()):
        n = min(n, capacity)
        if used and used + n > capacity:
            starts.append(i)
            used = 0
        used += n
    starts.append(len(lengths))
    return np.asarray(starts if len(lengths) else [0], dtype=np.int64)


class SFTBlocks(torch.utils.data.Dataset):
    """Whole conversations packed into blocks of seq_len+1 tokens; only assistant tokens are targets."""

    pad_id = 0

    def __init__(self, cache: TokenCache, seq_len: int):
        if cache.mask is None:
            raise ValueError("SFTBlocks needs an SFT cache (with a loss mask); build it with kind='sft'")
        self.cache, self.seq_len = cache, seq_len
        self.capacity = seq_len + 1
        lengths = np.diff(cache.offsets)
        self.starts = pack_sequential(lengths, self.capacity)  # planned from offsets only, no token reads
        self.n_truncated = int((lengths > self.capacity).sum())
        used = int(np.minimum(lengths, self.capacity).sum())
        self.padding_fraction = 1.0 - used / max(1, len(self) * self.capacity)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= b < len(self):
            raise IndexError(b)
        tokens = np.full(self.capacity, self.pad_id, dtype=np.int64)
        mask = np.zeros(self.capacity, dtype=bool)
        pos = 0
        for d in range(int(self.starts[b]), int(self.starts[b + 1])):
            ids, doc_mask = self.cache.doc(d)
            assert doc_mask is not None  # __init__ refused a cache without a loss mask
            n = min(len(ids), self.capacity - pos)
            tokens[pos : pos + n] = ids[:n]
            mask[pos : pos + n] = doc_mask[:n]
            pos += n
        targets = np.where(mask[1:], tokens[1:], IGNORE_INDEX)
        return torch.from_numpy(tokens[:-1]), torch.from_numpy(targets)  # (seq_len,), (seq_len,)


# --------------------------------------------------------------------------------------------
# Splitting and sampling


def split_indices(n_blocks: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random train/eval split of block indices (both sorted)."""
    n_eval = 0
    if eval_fraction > 0 and n_blocks >= 2:
        n_eval = min(n_blocks - 1, max(1, round(n_blocks * eval_fraction)))
    perm = np.random.default_rng(seed).permutation(n_blocks)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: depends only on (seed, epoch), so it can be recomputed after a restart."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return torch.randperm(n, generator=generator)


class EpochSampler:
    """Shuffled fixed-size batches over `indices`, resumable mid-epoch; use as a DataLoader batch_sampler.

    One iteration yields the rest of the current epoch, then the sampler moves to the next epoch. Each
    epoch's order depends only on (seed, epoch). An epoch is cut to whole optimizer steps of
    `step_samples` sequences (batch_size * world * accumulation), so every step has the same shape.

    Under torchrun each rank owns a sampler with its `rank` and `world`: the world draws a global batch of
    batch_size * world sequences and rank r takes its r-th share, so N ranks x batch b step through
    exactly the sequences one rank x N*b would, in the same order. The position is kept in sequences
    (not batches), so a run stopped on one world size resumes on another with the same global batch.
    """

    def __init__(self, indices: np.ndarray | list[int], batch_size: int, seed: int = 0, *, rank: int = 0,
                 world: int = 1, step_samples: int | None = None):
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.global_batch = batch_size * world
        step_samples = step_samples or self.global_batch
        if step_samples % self.global_batch:
            raise DataError(f"an optimizer step of {step_samples} sequences is not a whole number of global "
                            f"batches of {self.global_batch} (batch_size {batch_size} x {world} processes)")
        self.epoch_samples = len(self.indices) // step_samples * step_samples
        if self.epoch_samples == 0:
            raise DataError(
                f"only {len(self.indices)} training sequences, fewer than one step of {step_samples} "
                f"(batch_size {batch_size} x {world} process(es) x accumulation); lower batch_size or max_seq_len, or add data"
            )
        self.batches_per_epoch = self.epoch_samples // self.global_batch
        self.epoch, self.sample = 0, 0  # sample: sequences of this epoch already drawn by the whole world

    def __len__(self) -> int:
        left = (self.epoch_samples - self.sample) // self.global_batch
        return left if left > 0 else self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        if self.sample >= self.epoch_samples:
            self.epoch, self.sample = self.epoch + 1, 0
        order = self.indices[epoch_permutation(len(self.indices), self.seed, self.epoch)]
        while self.sample < self.epoch_samples:
            start = self.sample + self.rank * self.batch_size
            batch = order[start : start + self.batch_size].tolist()
            self.sample += self.global_batch  # counted before yielding: state_dict() taken after this batch resumes after it
            yield batch
        self.epoch, self.sample = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        if self.sample >= self.epoch_samples:
            return {"epoch": self.epoch + 1, "sample": 0}
        return {"epoch": self.epoch, "sample": self.sample}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.sample = int(state["epoch"]), int(state["sample"])
        if self.sample % self.global_batch:
            raise DataError(f"the saved data position ({self.sample} sequences into epoch {self.epoch}) is not a "
                            f"whole number of global batches of {self.global_batch}; resume with the batch_size "
                            "and number of processes the run was saved with")
