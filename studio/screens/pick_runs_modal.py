"""Choose runs to overlay on the monitor's loss curve; dismisses with the chosen run directories."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, SelectionList, Static


class PickRunsModal(ModalScreen[list[Path] | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("enter", "apply", "Apply")]

    def __init__(self, choices: list[tuple[str, Path]], chosen: list[Path]) -> None:
        super().__init__()
        self.choices, self.chosen = choices, set(chosen)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Overlay runs on the loss curve (space toggles, enter applies)", id="dialog-title")
            yield SelectionList[str](*[(label, str(path), path in self.chosen) for label, path in self.choices],
                                     id="pick-runs")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Apply", id="apply", variant="primary")

    def on_mount(self) -> None:
        self.query_one(SelectionList).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_apply() if event.button.id == "apply" else self.action_cancel()

    def action_apply(self) -> None:
        self.dismiss([Path(value) for value in self.query_one(SelectionList).selected])

    def action_cancel(self) -> None:
        self.dismiss(None)
