"""The studio: five tabs over the run directories. Start with `minimind-studio` (no arguments).

Start-up imports no torch/transformers: each tab imports the engine's heavy parts inside its thread
workers. Hidden tabs are mounted lazily, just after the first frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.lazy import Lazy
from textual.widgets import Footer, TabbedContent, TabPane, Tabs

from studio.commands import StudioCommands
from studio.errors import ShownError, shown_error
from studio.messages import OpenRuns
from studio.paths import display_path
from studio.screens.confirm_modal import ConfirmModal
from studio.screens.error_modal import ErrorModal
from studio.widgets.chat.chat_pane import ChatPane
from studio.widgets.data.data_pane import DataPane
from studio.widgets.monitor.monitor_pane import MonitorPane
from studio.widgets.pane import Pane
from studio.widgets.presets.presets_pane import PresetsPane
from studio.widgets.runs.runs_pane import RunsPane


class StudioApp(App[None]):
    CSS_PATH = "studio.tcss"
    TITLE = "minimind studio"
    COMMANDS = App.COMMANDS | {StudioCommands}
    AUTO_FOCUS = None  # the active pane focuses its own first widget once lazily mounted
    PANES: dict[str, type[Pane]] = {"presets": PresetsPane, "runs": RunsPane, "monitor": MonitorPane,
                                    "data": DataPane, "chat": ChatPane}
    BINDINGS = [
        Binding("1", "show_tab('presets')", "Presets"),
        Binding("2", "show_tab('runs')", "Runs"),
        Binding("3", "show_tab('monitor')", "Monitor"),
        Binding("4", "show_tab('data')", "Data"),
        Binding("5", "show_tab('chat')", "Chat"),
        Binding("ctrl+t", "start_tiny", "Start the tiny preset", show=False),
        Binding("q", "quit", "Quit"),
        Binding("escape", "leave_input", "Leave the field", show=False),
    ]

    def __init__(self, runs_dir: str | Path = "runs", *, offer_tiny: bool = True, poll_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir).resolve()
        self.offer_tiny = offer_tiny
        self.poll_s = poll_s  # how often run directories are re-read
        self.clock = clock  # injectable so snapshots show fixed ages
        self.followed: list[Path] = []  # runs the monitor shows; kept here so a lazily mounted monitor finds them

    def compose(self) -> ComposeResult:
        from engine.api.runs import list_runs

        initial = "runs" if list_runs(self.runs_dir) else "presets"
        with TabbedContent(initial=initial, id="tabs"):
            for number, (tab, pane_class) in enumerate(self.PANES.items(), start=1):
                with TabPane(f"{number} {tab.title()}", id=tab):
                    yield Lazy(pane_class(id=f"{tab}-pane"))
        yield Footer()

    def on_mount(self) -> None:
        from engine.api.runs import list_runs

        if self.offer_tiny and not list_runs(self.runs_dir):
            self.push_screen(
                ConfirmModal("No runs yet", f"There are no runs under {display_path(self.runs_dir)}/.\n\nStart the built-in tiny "
                             "preset (tokenizer → pretrain → SFT on the built-in corpus, a few minutes on a CPU) "
                             "and watch it in the monitor?", yes="Start tiny", no="Not now"),
                self._tiny_answer)

    def on_resize(self, event) -> None:
        # Textual has no media queries: classes on the main screen let studio.tcss fold the layout
        # for 80x24 terminals.
        screen = self.screen_stack[0] if self.screen_stack else self.screen
        screen.set_class(event.size.width < 100, "narrow")
        screen.set_class(event.size.height < 30, "short")

    def _tiny_answer(self, start: bool | None) -> None:
        if start:
            self.action_start_tiny()

    def action_start_tiny(self) -> None:
        self.action_show_tab("presets")
        self.call_after_refresh(self._launch_tiny)

    def _launch_tiny(self) -> None:
        pane = self.pane("presets")
        if isinstance(pane, PresetsPane):
            pane.launch_builtin("tiny")

    # ---- tabs

    def pane(self, tab: str) -> Pane | None:
        """The tab's pane, or None while it is still waiting for its lazy mount."""
        return next(iter(self.query(f"#{tab}-pane").results(Pane)), None)

    def action_show_tab(self, tab: str) -> None:
        # Drop the focus first: a focused widget left in the pane being hidden gets its focus moved to a
        # neighbour in that same pane, and TabbedContent then activates that pane again.
        self.set_focus(None)
        self.query_one("#tabs", TabbedContent).active = tab
        self.call_after_refresh(self._focus_pane, tab)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # A click on a tab leaves the focus on the tab bar: move it into the pane. Focus already inside
        # the pane (keys, palette) is left alone; focusing also activates a pane, so must not ping-pong.
        # A tab activated while the app shuts down has no screen left to ask for the focus.
        if not self.screen_stack:
            return
        if event.pane.id and (self.focused is None or isinstance(self.focused, Tabs)):
            self.call_after_refresh(self._focus_pane, event.pane.id)

    def _focus_pane(self, tab: str) -> None:
        pane = self.pane(tab)
        if pane is not None and self.query_one("#tabs", TabbedContent).active == tab:
            pane.focus_default()

    def action_leave_input(self) -> None:
        """Escape moves the focus from a text field to the tab bar, where 1-5 and arrows switch tabs."""
        self.query_one("#tabs", TabbedContent).query_one(Tabs).focus()

    async def run_pane_action(self, tab: str, action: str) -> None:
        """Run one of a tab's actions from the command palette: show the tab, then act."""
        self.action_show_tab(tab)
        pane = self.pane(tab)
        if pane is not None:
            await pane.run_action(action)

    # ---- cross-tab messages

    def on_open_runs(self, message: OpenRuns) -> None:
        self.followed = list(message.run_dirs)
        self.action_show_tab("monitor")
        monitor = self.pane("monitor")
        if isinstance(monitor, MonitorPane):
            monitor.follow(self.followed)

    def show_error(self, title: str, error: BaseException | ShownError) -> None:
        """The one way an error reaches a dialog: an EngineError as its paragraph, anything else as a bug
        with its type and traceback (studio.errors.shown_error sorts them)."""
        self.push_screen(ErrorModal(title, error if isinstance(error, ShownError) else shown_error(error)))
