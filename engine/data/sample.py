"""Down-sample a jsonl file to a byte budget: random lines, chosen reproducibly, streamed twice.

The tutorial's SFT sampler reads the whole file into memory; here memory is 8 bytes per line (the
line lengths), so a 10 GB file samples in a few hundred MB at most.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SampleReport:
    source_lines: int
    source_bytes: int
    kept_lines: int
    kept_bytes: int
    out_path: Path


def choose_lines(lengths: np.ndarray, budget_bytes: int, seed: int) -> np.ndarray:
    """Boolean mask of lines kept: a seeded random order, taken while the running size fits the budget."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    fits = np.cumsum(lengths[order]) <= budget_bytes
    keep = np.zeros(len(lengths), dtype=bool)
    keep[order[fits]] = True
    return keep


def sample_jsonl(src: Path, dst: Path, target_mb: float, seed: int = 42) -> SampleReport:
    """Write to dst a random subset of src's non-blank lines totalling at most target_mb MiB (original order)."""
    lengths = array("q")
    with open(src, "rb") as handle:
        for raw in handle:
            lengths.append(len(raw) if raw.strip() else 0)
    sizes = np.frombuffer(lengths, dtype=np.int64) if len(lengths) else np.zeros(0, dtype=np.int64)
    keep = choose_lines(sizes, int(target_mb * 1024 * 1024), seed) & (sizes > 0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    kept_bytes = 0
    with open(src, "rb") as source, open(tmp, "wb") as out:
        for index, raw in enumerate(source):
            if keep[index]:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                kept_bytes += len(raw)
    tmp.replace(dst)
    return SampleReport(int((sizes > 0).sum()), int(sizes.sum()), int(keep.sum()), kept_bytes, dst)
