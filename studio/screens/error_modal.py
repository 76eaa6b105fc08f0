"""Where worker failures land: the message in full, the app keeps running."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ErrorModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter", "dismiss", "Close"), Binding("c", "copy", "Copy message")]

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self.title_text, self.message = title, message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error"):
            yield Static(self.title_text, id="dialog-title")
            with VerticalScroll(id="dialog-body"):
                yield Static(self.message, id="error-message", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button("Copy", id="copy")
                yield Button("Close", id="close", variant="error")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "copy":
            self.action_copy()
        else:
            self.dismiss()

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.message)
        self.notify("error message copied")
