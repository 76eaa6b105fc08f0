"""The form generated from the preset schema: one collapsible per section, one FieldRow per field.

It owns the values being edited (a plain dict shaped like the TOML) and posts `Changed` after every
edit; the pane validates, shows the CLI's message and the equivalent command.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Input, Select, Switch

from engine.config import Preset
from studio.preset_form import (
    FieldSpec,
    get_value,
    parse_text,
    schema_fields,
    sections,
    set_value,
)
from studio.widgets.presets.field_row import FieldRow, field_id
from studio.widgets.presets.field_section import FieldSection

SECTION_TITLES = {"": "general", "tokenizer": "tokenizer  (stage 1)", "pretrain": "pretrain  (stage 2)",
                  "sft": "sft  (stage 3)"}
OPEN_SECTIONS = ("",)


def section_doc(section: str) -> str:
    """The first line of the section model's docstring ("Where and how the run executes.")."""
    model: Any = Preset
    for part in filter(None, section.split(".")):
        model = model.model_fields[part].annotation
    return (model.__doc__ or "").strip().splitlines()[0]


class PresetEditor(VerticalScroll):
    @dataclass
    class Changed(Message):
        editor: PresetEditor
        spec: FieldSpec

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fields = schema_fields()
        self.by_id = {field_id(spec): spec for spec in self.fields}
        self.data: dict[str, Any] = Preset().model_dump(mode="json")
        self.sections: dict[str, FieldSection] = {}

    def compose(self) -> ComposeResult:
        for section, specs in sections(self.fields).items():
            widget = FieldSection(section, SECTION_TITLES.get(section, section), section_doc(section), specs,
                                  lambda spec: get_value(self.data, spec.path), collapsed=section not in OPEN_SECTIONS)
            self.sections[section] = widget
            yield widget

    @property
    def rows(self) -> dict[str, FieldRow]:
        """Rows built so far (a closed section builds its rows when first opened)."""
        return {key: row for section in self.sections.values() for key, row in section.rows.items()}

    def load(self, data: dict[str, Any]) -> None:
        """Show these values (a preset as loaded from its file)."""
        self.data = copy.deepcopy(data)
        for row in self.rows.values():
            row.show(get_value(self.data, row.spec.path))

    def _edited(self, widget_id: str | None, value: Any) -> None:
        spec = self.by_id.get(widget_id or "")
        if spec is None:
            return
        new = value if spec.kind in ("bool", "choice") else parse_text(value, spec)
        if get_value(self.data, spec.path) == new:
            return  # loading a preset re-posts every value; only real edits count
        set_value(self.data, spec.path, new)
        self.post_message(self.Changed(self, spec))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._edited(event.input.id, event.value)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self._edited(event.switch.id, event.value)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.NULL:
            self._edited(event.select.id, event.value)

    async def set_field(self, key: str, text: str) -> None:
        """Put text into a field as if typed (opens its section first); used by tests."""
        spec = next(s for s in self.fields if s.key == key)
        await self.sections[spec.section].open()
        row = self.rows[key]
        widget = row.input
        if isinstance(widget, Input):
            widget.value = text
        else:
            row.show(text)

    def mark(self, invalid: set[str], edited: set[str]) -> None:
        for key, row in self.rows.items():
            row.mark(any(bad == key or key.startswith(bad + ".") for bad in invalid if bad), key in edited)
