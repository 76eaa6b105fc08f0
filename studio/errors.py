"""What the studio shows for an exception: the engine's paragraph, or a bug named as a bug.

An `EngineError` is a problem the user can fix, and its message is already the paragraph to show
(engine/errors.py). Anything else (a torch RuntimeError, a KeyError in our code) is a bug or an
environment failure: hiding its type would make "CUDA error: out of memory" and a typo look alike, so
it is shown with its type, a line saying it is a bug, and the traceback to report. Every place that
catches an error for the user goes through `shown_error`, so the two kinds never get mixed up.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

from engine.errors import EngineError

BUG_NOTE = ("This is a bug (or a failure of the machine), not a problem with your preset or data: "
            "please report it with the traceback.")


@dataclass(frozen=True)
class ShownError:
    """One error as the studio shows it."""

    message: str  # an EngineError's paragraph on one line; for a bug "Type: message" and BUG_NOTE
    traceback: str = ""  # a bug's traceback (any error's with MINIMIND_DEBUG set); "" when there is none
    bug: bool = False


def shown_error(error: BaseException) -> ShownError:
    """Sort an exception into the user's paragraph (EngineError) or a bug with its traceback (anything else)."""
    debug = bool(os.environ.get("MINIMIND_DEBUG"))
    if isinstance(error, EngineError):
        # One paragraph: the dialogs and the launch verdict are narrow, and a wrapped line reads better than breaks.
        text = " ".join(str(error).split()) or type(error).__name__
        return ShownError(text, _traceback(error) if debug else "")
    text = str(error).strip() or "(no message)"
    return ShownError(f"{type(error).__name__}: {text}\n{BUG_NOTE}", _traceback(error), bug=True)


def _traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
