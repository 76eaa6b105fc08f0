"""Where errors land: the message in full, a bug's traceback folded under it, and the app keeps running."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Collapsible, Static

from studio.errors import ShownError
from studio.screens.text_modal import TextModal


class ErrorModal(TextModal):
    BINDINGS = [Binding("escape,enter", "dismiss", "Close"), Binding("c", "copy", "Copy message")]
    DIALOG_CLASS = "error"
    CLOSE_VARIANT = "error"
    COPIED = "error message copied"

    def __init__(self, title: str, error: ShownError) -> None:
        # Copy takes the traceback too: it is what a bug report needs.
        super().__init__(title, error.message, "\n\n".join(part for part in (error.message, error.traceback) if part))
        self.message, self.traceback = error.message, error.traceback

    def compose_body(self) -> ComposeResult:
        yield from super().compose_body()
        if self.traceback:
            # Folded: the message is what to read first; the frames are for whoever fixes the bug.
            with Collapsible(title="traceback", collapsed=True, id="error-traceback"):
                yield Static(Text(self.traceback, style="dim"), id="error-traceback-text")
