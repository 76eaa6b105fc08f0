"""Which failures are the user's to fix, for the front ends' last `except` (the CLI's main, a worker's handler).

The error classes themselves are engine.errors' (the studio imports that module directly); this adds the
one judgement that needs engine internals: a full disk anywhere in an exception's chain (an OSError from
Python's own I/O, a library's wrapped error) is turned into the engine's DiskFull paragraph.
"""

from __future__ import annotations

from engine.disk_full import disk_full_error
from engine.errors import EngineError


def user_error(error: BaseException) -> EngineError | None:
    """The paragraph to show the user for `error`: an EngineError as it is, a full disk as DiskFull (what to
    free, where it struck); None for anything else, which is a bug and should keep its traceback."""
    found = disk_full_error(error)
    if found is not None:
        return found
    return error if isinstance(error, EngineError) else None
