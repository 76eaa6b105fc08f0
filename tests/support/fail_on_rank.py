"""A sitecustomize for the rank-failure test: put this folder's copy first on a torchrun job's PYTHONPATH
and the process whose RANK is $FAIL_RANK raises at training step $FAIL_STEP (a real exception inside the real
loop, as an out-of-memory or a bug would), while every other process runs unchanged."""

from __future__ import annotations

import os

if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("FAIL_RANK"):
    import engine.train.loop as loop

    real_step = loop.train_step
    calls = [0]

    def failing_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(os.environ.get("FAIL_STEP", "3")):
            raise RuntimeError(f"injected failure on rank {os.environ['RANK']}")
        return real_step(*args, **kwargs)

    loop.train_step = failing_step
