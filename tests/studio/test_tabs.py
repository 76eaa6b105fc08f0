"""Tab navigation, focus and the command palette."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input, OptionList, TabbedContent

from studio.app import StudioApp
from studio.commands import palette_entries
from studio.widgets.monitor.monitor_pane import MonitorPane
from tests.support.fake_runs import make_run
from tests.support.wait import ready


async def test_number_keys_switch_tabs_and_move_focus(runs_dir: Path) -> None:
    """Guards against tab keys that change the tab but leave the focus behind in the hidden pane
    (TabbedContent then flips back to it, and keys go to an invisible widget)."""
    make_run(runs_dir, "20250101-000000-tiny")
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        tabs = app.query_one("#tabs", TabbedContent)
        assert tabs.active == "runs"  # with runs on disk the studio opens on them
        expected = {"1": ("presets", OptionList), "2": ("runs", DataTable), "3": ("monitor", MonitorPane),
                    "4": ("data", OptionList)}
        for key, (tab, widget_type) in expected.items():
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == tab
            assert isinstance(app.focused, widget_type), (key, app.focused)
            assert app.pane(tab) in app.focused.ancestors_with_self  # focus is inside the visible pane
        await pilot.press("5")
        await pilot.pause()
        assert tabs.active == "chat" and isinstance(app.focused, Input)
        await pilot.press("2")  # typed into the chat input, not a tab switch
        await pilot.pause()
        assert tabs.active == "chat" and app.focused.value == "2"
        await pilot.press("escape", "2")  # escape leaves the field; then 2 switches
        await pilot.pause()
        assert tabs.active == "runs" and isinstance(app.focused, DataTable)


async def test_clicking_a_tab_focuses_its_pane(runs_dir: Path) -> None:
    """Guards against mouse users landing on a tab whose keys do nothing (focus stuck on the tab bar)."""
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        await pilot.click("#--content-tab-runs")
        await pilot.pause()
        await pilot.pause()
        assert app.query_one("#tabs", TabbedContent).active == "runs"
        assert isinstance(app.focused, DataTable)


async def test_palette_has_an_entry_for_every_binding_and_runs_it(runs_dir: Path) -> None:
    """Guards against actions reachable only by a key nobody remembers: every binding of the app and
    of each tab is a palette command, and choosing one runs it in its tab."""
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        entries = {title: callback for title, _, callback in palette_entries(app)}
        for tab, pane_class in app.PANES.items():
            for binding in pane_class.BINDINGS:
                assert f"{tab.title()}: {binding.description}" in entries
        assert "Chat" in entries and "Start the tiny preset" in entries
        await entries["Monitor: Log scale"]()
        await pilot.pause()
        assert app.query_one("#tabs", TabbedContent).active == "monitor"
        assert app.query_one(MonitorPane).log_y is True
