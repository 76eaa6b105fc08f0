"""The engine's errors: one root for every problem the user can fix, so callers can tell them from bugs.

An `EngineError`'s message is one paragraph written for the user: it names the file (and line), the
preset field or the run it is about, and says what to do. The CLI prints it as is and exits 2; the
studio shows it in a dialog. Anything that is *not* an EngineError (a torch RuntimeError, a KeyError
in our code) is a bug or an environment failure and is shown as one, with its traceback kept.

The subclasses say which kind of thing is wrong, so a caller can react to a kind (a checkpoint that
cannot be used falls back to the previous one; a busy run is refused, not failed):

    EngineError
      PresetError       a preset file, a `--set` override or a field's value
      DataError         a data file: missing, unreadable, a bad line (file:line), too little data
      CheckpointError   a checkpoint or model directory that cannot be found or used
      ResourceError     the machine: a device or dtype it lacks, memory, a locked or missing run
        DiskFull        no space left (or a quota reached) where the engine was writing (engine.disk_full)
      TrainingError     training itself: a loss that became NaN/inf
"""

from __future__ import annotations

# Exit status for an error the user can fix (argparse uses 2 for bad arguments too).
USER_ERROR_EXIT = 2


class EngineError(Exception):
    """A problem the user can fix; str(error) is the whole paragraph that explains it."""


class PresetError(EngineError):
    """A preset that cannot be used (file, TOML, field value or override)."""


class DataError(EngineError):
    """A data file that cannot be used; the message names the file (and line) and what to do."""


class CheckpointError(EngineError):
    """A checkpoint or model directory that cannot be found or used; the message says which and what to do."""


class ResourceError(EngineError):
    """Something the machine or the runs folder cannot provide: a device, a dtype, memory, a free run."""


class DiskFull(ResourceError):
    """A write found no space (ENOSPC/EDQUOT); the message names the file and says what to free and how to go on."""


class TrainingError(EngineError):
    """Training cannot go on (e.g. the loss became NaN/inf); the message carries the step and advice."""
