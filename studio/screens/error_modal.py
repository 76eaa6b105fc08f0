"""Where worker failures land: the message in full, the app keeps running."""

from __future__ import annotations

from textual.binding import Binding

from studio.screens.text_modal import TextModal


class ErrorModal(TextModal):
    BINDINGS = [Binding("escape,enter", "dismiss", "Close"), Binding("c", "copy", "Copy message")]
    DIALOG_CLASS = "error"
    CLOSE_VARIANT = "error"
    COPIED = "error message copied"

    def __init__(self, title: str, message: str) -> None:
        super().__init__(title, message, message)
        self.message = message
