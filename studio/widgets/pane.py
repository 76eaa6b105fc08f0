"""The base of each tab's content: a default focus target and worker failures shown in a modal."""

from __future__ import annotations

import os
import traceback

from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import TabbedContent, Tabs
from textual.worker import Worker, WorkerState

from studio.screens.error_modal import ErrorModal

# Errors whose text is written for users (PresetError, DataError, CheckpointError... are
# ValueError/RuntimeError subclasses with a full paragraph): shown without the exception's type.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def describe_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if not isinstance(error, USER_ERRORS):
        text = f"{type(error).__name__}: {text}"
    if os.environ.get("MINIMIND_DEBUG"):
        text += "\n\n" + "".join(traceback.format_exception(error))
    return text


def one_paragraph(error: BaseException) -> str:
    """The error as one paragraph: a user-facing message joined onto one line, never a traceback."""
    return " ".join(describe_error(error).split())


class Pane(Vertical):
    """A tab's content. Subclasses name their first focus target with DEFAULT_FOCUS (a selector)."""

    DEFAULT_FOCUS = ""

    def on_mount(self) -> None:
        # Runs besides each subclass's on_mount (Textual calls handlers along the MRO). A lazily mounted
        # pane in the active tab takes the focus if nobody else has it.
        self.call_after_refresh(self._initial_focus)

    def _initial_focus(self) -> None:
        focused = self.app.focused
        active = self.app.query_one("#tabs", TabbedContent).active
        if (focused is None or isinstance(focused, Tabs)) and self.parent is not None and self.parent.id == active:
            self.focus_default()

    def focus_default(self) -> None:
        target: Widget = self.query_one(self.DEFAULT_FOCUS) if self.DEFAULT_FOCUS else self
        if target.focusable:
            target.focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.app.push_screen(ErrorModal(f"{event.worker.name or 'background task'} failed",
                                            describe_error(event.worker.error)))
            self.worker_failed(event.worker)

    def worker_failed(self, worker: Worker) -> None:
        """Hook: put the pane back in a usable state after a failed worker (e.g. re-enable a button)."""
