"""The command palette (ctrl+p): one entry for every binding of the app and of each tab.

Entries are derived from the BINDINGS themselves, so a new key binding is in the palette without a
second list to keep in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from studio.app import StudioApp

Entry = tuple[str, str, Callable[[], object]]  # title, help, callback


def palette_entries(app: StudioApp) -> Iterator[Entry]:
    for binding in app.BINDINGS:
        if binding.description and binding.action != "command_palette":
            yield binding.description, f"key {binding.key_display or binding.key}", partial(app.run_action, binding.action)
    for tab, pane_class in app.PANES.items():
        for binding in pane_class.BINDINGS:
            if binding.description:
                yield (f"{tab.title()}: {binding.description}", f"key {binding.key_display or binding.key} in {tab}",
                       partial(app.run_pane_action, tab, binding.action))


class StudioCommands(Provider):
    @property
    def studio_app(self) -> StudioApp:
        """The palette is only registered by StudioApp (its COMMANDS)."""
        return cast("StudioApp", self.app)

    async def discover(self) -> Hits:
        for title, help_text, callback in palette_entries(self.studio_app):
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in palette_entries(self.studio_app):
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, text=title, help=help_text)
