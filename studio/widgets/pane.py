"""The base of each tab's content: a default focus target, the typed app, and worker failures in a modal."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import TabbedContent, Tabs
from textual.worker import Worker, WorkerState

if TYPE_CHECKING:
    from studio.app import StudioApp


class Pane(Vertical):
    """A tab's content. Subclasses name their first focus target with DEFAULT_FOCUS (a selector)."""

    DEFAULT_FOCUS = ""

    @property
    def studio_app(self) -> StudioApp:
        """The app as a StudioApp (runs_dir, poll_s, clock, followed...): panes only ever run inside one, and
        a typed property beats a `type: ignore` at every use (posting's habit)."""
        return cast("StudioApp", self.app)

    def on_mount(self) -> None:
        # Runs besides each subclass's on_mount (Textual calls handlers along the MRO). A lazily mounted
        # pane in the active tab takes the focus if nobody else has it.
        self.call_after_refresh(self._initial_focus)

    def _initial_focus(self) -> None:
        focused = self.app.focused
        active = self.app.query_one("#tabs", TabbedContent).active
        if (focused is None or isinstance(focused, Tabs)) and self.parent is not None and self.parent.id == active:
            self.focus_default()

    def focus_default(self) -> None:
        target: Widget = self.query_one(self.DEFAULT_FOCUS) if self.DEFAULT_FOCUS else self
        if target.focusable:
            target.focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.studio_app.show_error(f"{event.worker.name or 'background task'} failed", event.worker.error)
            self.worker_failed(event.worker)

    def worker_failed(self, worker: Worker) -> None:
        """Hook: put the pane back in a usable state after a failed worker (e.g. re-enable a button)."""
