"""One preset field in the editor: its name, an input made for its type, and its docstring as help."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, Switch

from studio.preset_form import FieldSpec, format_value


def field_id(spec: FieldSpec) -> str:
    return "f-" + spec.key.replace(".", "-")


class FieldRow(Vertical):
    def __init__(self, spec: FieldSpec, value: Any) -> None:
        super().__init__(classes="field-row")
        self.spec, self.value = spec, value

    def compose(self) -> ComposeResult:
        spec = self.spec
        with Horizontal(classes="field-line"):
            yield Label(spec.path[-1], classes="field-name")
            yield self._input(spec, self.value)
        if spec.description:
            yield Static(spec.description, classes="field-help", markup=False)

    @staticmethod
    def _input(spec: FieldSpec, value: Any) -> Widget:
        ident = field_id(spec)
        if spec.kind == "bool":
            return Switch(bool(value), id=ident, classes="field-input")
        if spec.kind == "choice":
            return Select([(c, c) for c in spec.choices], value=str(value), allow_blank=False, id=ident,
                          classes="field-input", compact=True)
        placeholder = "(empty: default)" if spec.optional else ""
        return Input(format_value(value, spec), placeholder=placeholder, id=ident, classes="field-input", compact=True)

    @property
    def input(self) -> Widget:
        return self.query_one(".field-input")

    def show(self, value: Any) -> None:
        """Put a value in the input (loading a preset). Its Changed message is suppressed: handled later,
        it would overwrite whatever the editor holds by then (another preset, a restored draft)."""
        widget = self.input
        with self.prevent(Input.Changed, Switch.Changed, Select.Changed):
            if isinstance(widget, Switch):
                widget.value = bool(value)
            elif isinstance(widget, Select):
                widget.value = str(value)
            elif isinstance(widget, Input):
                widget.value = format_value(value, self.spec)

    def mark(self, invalid: bool, edited: bool) -> None:
        self.set_class(invalid, "invalid")
        self.set_class(edited, "edited")
