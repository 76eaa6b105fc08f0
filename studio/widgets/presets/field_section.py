"""One section of the preset form (model, runtime, pretrain...). Its rows are built on first expand:
mounting all ~80 fields up front took most of a second, and most sections stay closed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.widget import AwaitMount
from textual.widgets import Collapsible, Static

from studio.preset_form import FieldSpec
from studio.widgets.presets.field_row import FieldRow


class FieldSection(Collapsible):
    def __init__(self, section: str, title: str, doc: str, specs: list[FieldSpec],
                 value_of: Callable[[FieldSpec], Any], collapsed: bool) -> None:
        super().__init__(Static(doc, classes="section-help", markup=False), title=title, collapsed=collapsed,
                         id="sec-" + (section.replace(".", "-") or "general"))
        self.section, self.specs, self.value_of = section, specs, value_of
        self.rows: dict[str, FieldRow] = {}

    def on_mount(self) -> None:
        if not self.collapsed:
            self.build()

    def on_collapsible_expanded(self, event: Collapsible.Expanded) -> None:
        if event.collapsible is self:
            self.build()

    def build(self) -> AwaitMount | None:
        """Mount the rows (once); await the result to use them at once."""
        if self.rows:
            return None
        self.rows = {spec.key: FieldRow(spec, self.value_of(spec)) for spec in self.specs}
        return self.query_one(Collapsible.Contents).mount_all(self.rows.values())

    async def open(self) -> None:
        self.collapsed = False
        pending = self.build()
        if pending is not None:
            await pending
