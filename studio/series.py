"""A metric series of bounded size for drawing: bucketed means, so a million steps cost ~2000 points.

Points arrive in order. Each bucket averages `width` consecutive points (keeping min and max too);
when the buckets outgrow `cap`, neighbours merge pairwise and `width` doubles. Adding is O(1)
amortised, memory is O(cap), and the shape of the whole run stays visible (a stride sample would
skip spikes; means of equal-sized buckets do not drift the way a moving window does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Series:
    cap: int = 2000
    width: int = 1  # raw points per full bucket
    xs: list[float] = field(default_factory=list)  # x of each bucket's first point
    sums: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    mins: list[float] = field(default_factory=list)
    maxs: list[float] = field(default_factory=list)
    total: int = 0  # raw points seen
    last: float | None = None

    def add(self, x: float, y: float | None) -> None:
        if y is None or not math.isfinite(y):
            return  # a NaN step (logged as null) must not poison a whole bucket's mean
        self.total += 1
        self.last = y
        counts = self.counts
        if counts and counts[-1] < self.width:
            # Runs once per metric per step event (5 per event): plain comparisons, not min()/max() calls.
            self.sums[-1] += y
            counts[-1] += 1
            if y < self.mins[-1]:
                self.mins[-1] = y
            elif y > self.maxs[-1]:
                self.maxs[-1] = y
            return
        self.xs.append(x)
        self.sums.append(y)
        self.counts.append(1)
        self.mins.append(y)
        self.maxs.append(y)
        if len(self.xs) > self.cap:
            self._halve()

    def _halve(self) -> None:
        """Merge buckets pairwise (an odd last bucket stays alone) and double the bucket width."""
        n = len(self.xs)
        pairs = range(0, n, 2)
        self.xs = [self.xs[i] for i in pairs]
        self.sums = [sum(self.sums[i:i + 2]) for i in pairs]
        self.counts = [sum(self.counts[i:i + 2]) for i in pairs]
        self.mins = [min(self.mins[i:i + 2]) for i in pairs]
        self.maxs = [max(self.maxs[i:i + 2]) for i in pairs]
        self.width *= 2

    def truncate(self, x: float) -> None:
        """Drop buckets that start after x (a resumed stage logs the steps after its checkpoint again)."""
        keep = next((i for i, bx in enumerate(self.xs) if bx > x), len(self.xs))
        for values in (self.xs, self.sums, self.counts, self.mins, self.maxs):
            del values[keep:]
        self.last = self.sums[-1] / self.counts[-1] if self.counts else None

    def points(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(xs, mean ys) as immutable tuples, safe to hand from a worker thread to the UI."""
        return tuple(self.xs), tuple(s / c for s, c in zip(self.sums, self.counts))

    def __len__(self) -> int:
        return len(self.xs)


class Ema:
    """Exponential moving average with bias correction (TensorBoard's smoothing), fed raw points."""

    def __init__(self, beta: float = 0.9) -> None:
        self.beta, self.value, self.n = beta, 0.0, 0

    def update(self, y: float | None) -> float | None:
        if y is None or not math.isfinite(y):
            return None
        self.n += 1
        self.value = self.beta * self.value + (1 - self.beta) * y
        return self.value / (1 - self.beta ** self.n)
