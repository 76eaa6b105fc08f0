"""The engine's errors: one root for every problem the user can fix, so callers can tell them from bugs.

An `EngineError`'s message is one paragraph written for the user: it names the file (and line), the
preset field or the run it is about, and says what to do. The CLI prints it as is and exits 2; the
studio shows it in a dialog. Anything that is *not* an EngineError (a torch RuntimeError, a KeyError
in our code) is a bug or an environment failure and is shown as one, with its traceback kept.

The subclasses say which kind of thing is wrong, so a caller can react to a kind (a checkpoint that
cannot be used falls back to the previous one; a busy run is refused, not failed):

    EngineError
      PresetError         a preset file, a `--set` override or a field's value
      DataError           a data file: missing, unreadable, a bad line (file:line), too little data
        ToolSpecError     a chat tools file (JSON function specs) that cannot be used
      CheckpointError     a checkpoint or model directory that cannot be found or used
        ExportError       a checkpoint that cannot be written in, or read from, Hugging Face / GGUF format
      ResourceError       the machine: a device or dtype it lacks, memory, a locked or missing run
        DiskFull          no space left (or a quota reached) where the engine was writing (engine.disk_full)
        DeviceError       a device or dtype this machine cannot provide
        RunBusy           a run directory locked by a live process (running, being started or deleted)
      RunStateError       a change of a run's state that its state machine does not allow (a bug or a hand edit)
      TrainingError       training itself
        NonFiniteLoss     the loss became NaN/inf
      ToolResultError     a chat tool result that cannot be taken (no call waiting, an unreadable file)

Every error the user can meet is defined here, so this tree is the whole list. Three internal signals that
never reach the user live beside what raises them: engine.locks.WaitCancelled (a stop while waiting for a
lock), engine.disk_full.NoSpaceError (turned into DiskFull) and engine.data.messages.RecordProblem (turned
into a located DataError).
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


class ToolSpecError(DataError):
    """A tools file that cannot be used; the message is one line naming the file."""


class ExportError(CheckpointError):
    """A checkpoint that cannot be written in, or read from, Hugging Face format."""


class DeviceError(ResourceError):
    """A device or dtype the machine cannot provide; the message says what to use instead."""


class RunBusy(ResourceError):
    """The run directory is locked by a live process."""


class RunStateError(EngineError):
    """A state change status.json's state machine does not allow (engine.runs.run.TRANSITIONS)."""


class NonFiniteLoss(TrainingError):
    """The loss became NaN/inf; the message carries the step and advice."""


class ToolResultError(EngineError):
    """A tool result the chat cannot take (no call waiting for one, an unreadable file); one line."""
