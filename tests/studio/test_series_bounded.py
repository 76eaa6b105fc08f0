"""The monitor's series stay bounded however long the run, and their buckets stay exact."""

from __future__ import annotations

import math
import random

from studio.series import Series


def test_series_stays_bounded_and_every_bucket_is_exact() -> None:
    """Guards against a series that keeps every point of a long run (memory growing with the step
    count, a chart plotting hundreds of thousands of points), and against a faster `add` getting a
    bucket's min, max, sum or count wrong, or losing the last value, a NaN step or a spike."""
    rng = random.Random(0)
    n, cap = 300_000, 500
    ys = [10.0 / (1 + i / 1000) + rng.gauss(0, 0.05) for i in range(n)]
    ys[123_457] = 50.0  # one loss spike
    ys[200_001] = -3.0  # one dip
    series = Series(cap=cap)
    for i, y in enumerate(ys):
        series.add(i, y)
        if i % 50_000 == 0:
            series.add(i, math.nan)  # logged as null by the engine: skipped, never averaged in
    assert len(series) <= cap and series.width >= n // cap
    assert series.total == n and sum(series.counts) == n and series.last == ys[-1]

    # Buckets are consecutive runs of raw points: recompute each one from the raw values.
    start = 0
    for x, total, count, low, high in zip(series.xs, series.sums, series.counts, series.mins, series.maxs):
        chunk = ys[start:start + count]
        assert x == start and low == min(chunk) and high == max(chunk)
        assert math.isclose(total, math.fsum(chunk), rel_tol=1e-9, abs_tol=1e-9)
        start += count
    assert min(series.mins) == -3.0 and max(series.maxs) == 50.0

    xs, means = series.points()
    assert len(xs) == len(means) == len(series) and means[0] > means[-1]


def test_points_are_immutable_copies() -> None:
    """Guards against handing the UI thread lists the follower thread keeps appending to."""
    series = Series(cap=4)
    for i in range(3):
        series.add(i, float(i))
    xs, ys = series.points()
    series.add(3, 3.0)
    assert isinstance(xs, tuple) and isinstance(ys, tuple) and xs == (0, 1, 2)
