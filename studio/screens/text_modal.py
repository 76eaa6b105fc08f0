"""A scrollable read-only text with copy: the preset diff, and (as ErrorModal) worker failures."""

from __future__ import annotations

from rich.console import RenderableType
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class TextModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Close"), Binding("c", "copy", "Copy")]
    DIALOG_CLASS = "wide"
    CLOSE_VARIANT = "primary"
    COPIED = "copied"

    def __init__(self, title: str, body: RenderableType, plain: str) -> None:
        super().__init__()
        self.title_text, self.body, self.plain = title, body, plain

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes=self.DIALOG_CLASS):
            yield Static(self.title_text, id="dialog-title")
            with VerticalScroll(id="dialog-body"):
                yield from self.compose_body()
            with Horizontal(id="dialog-buttons"):
                yield Button("Copy", id="copy")
                yield Button("Close", id="close", variant=self.CLOSE_VARIANT)

    def compose_body(self) -> ComposeResult:
        """What scrolls between the title and the buttons (ErrorModal adds a traceback)."""
        yield Static(self.body, id="text-body", markup=False)

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "copy":
            self.action_copy()
        else:
            self.dismiss()

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.plain)
        self.notify(self.COPIED)
