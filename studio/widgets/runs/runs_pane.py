"""The Runs tab: every run directory under the studio's runs folder, refreshed live.

Runs started from the CLI appear the same way: the table is rebuilt from the run directories (a
thread worker scans them every poll interval and posts `RunsScanned`), never from studio memory.
`x` exports a checkpoint of the run under the cursor (studio/screens/export_modal.py), one export at
a time, in a thread worker: the engine's export modules import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static
from textual.worker import Worker

from engine.api import RunState, RunSummary, runs
from engine.errors import EngineError
from studio import exporter, launcher
from studio.checkpoint_list import list_checkpoint_choices
from studio.display import state_text
from studio.errors import shown_error
from studio.exporter import ExportRequest
from studio.messages import ExportDone, ExportFailed, OpenRuns, RunsScanned
from studio.paths import display_path
from studio.runs_table import COLUMNS, row_cells
from studio.screens.confirm_modal import ConfirmModal
from studio.screens.export_modal import ExportModal
from studio.widgets.pane import Pane

MARK = "● "


class RunsPane(Pane):
    DEFAULT_FOCUS = "#runs-table"
    BINDINGS = [
        Binding("o", "open", "Monitor"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare marked"),
        Binding("s", "stop", "Stop"),
        Binding("r", "resume", "Resume"),
        Binding("d", "delete", "Delete"),
        Binding("x", "export", "Export"),
        Binding("n", "new", "New run"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: dict[str, RunSummary] = {}
        self.marked: set[Path] = set()
        self.exporting: ExportRequest | None = None  # the export under way; one at a time

    def compose(self) -> ComposeResult:
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="runs-detail")
        yield Static("", id="runs-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.scan()
        self.set_interval(self.studio_app.poll_s, self.scan)

    # ---- scanning

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-scan", name="reading run directories")
    def scan(self) -> None:
        try:
            rows = runs.runs(self.studio_app.runs_dir)
        except OSError as error:  # every second: a hint, not a modal per scan
            self.post_message(RunsScanned([], f"cannot read {error.filename}: {error.strerror}"))
            return
        self.post_message(RunsScanned(rows))

    def on_runs_scanned(self, message: RunsScanned) -> None:
        if message.error:
            self.query_one("#runs-hint", Static).update(Text(message.error, style="red"))
            return
        self.show_rows(message.rows)

    def show_rows(self, rows: list[RunSummary]) -> None:
        """Update the table in place (cursor and scroll stay put), newest run first."""
        table = self.query_one(DataTable)
        now = self.studio_app.clock()
        fresh = {str(row.run_dir): row for row in rows}
        self.marked &= {row.run_dir for row in rows}
        for key in [k for k in self.rows if k not in fresh]:
            table.remove_row(key)
            self.rows.pop(key)
        added = False
        for key, row in fresh.items():
            cells = self._cells(row, now)
            if key not in self.rows:
                table.add_row(*cells, key=key)
                added = True
            else:
                old = self._cells(self.rows[key], now)
                for column, new, before in zip(COLUMNS, cells, old):
                    if str(new) != str(before):
                        table.update_cell(key, column, new)
            self.rows[key] = row
        if added:
            table.sort("id", key=lambda cell: str(cell).removeprefix(MARK), reverse=True)  # ids sort by time
        self._hint()
        self._detail()

    def _cells(self, row: RunSummary, now: float) -> list[Any]:
        cells: list[Any] = list(row_cells(row, now))
        cells[0] = (MARK if row.run_dir in self.marked else "") + cells[0]
        cells[6] = state_text(row.state)
        return cells

    def _hint(self) -> None:
        live = sum(row.live for row in self.rows.values())
        text = f"{len(self.rows)} runs, {live} live, in {display_path(self.studio_app.runs_dir)}/"
        if self.marked:
            text += f" · {len(self.marked)} marked (c: compare)"
        if self.exporting:
            text += f" · exporting to {display_path(self.exporting.out_dir)}/…"
        if not self.rows:
            text = (f"no runs under {display_path(self.studio_app.runs_dir)}/ yet · n: pick a preset and launch it · "
                    "ctrl+t: start tiny")
        self.query_one("#runs-hint", Static).update(text)

    # ---- the run under the cursor

    def current(self) -> RunSummary | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row < 0 or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.rows.get(key or "")

    def select_run(self, run_dir: Path) -> None:
        table = self.query_one(DataTable)
        table.move_cursor(row=table.get_row_index(str(run_dir)))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def _detail(self) -> None:
        """One line about the run under the cursor: where it lives and why it ended."""
        row = self.current()
        text = ""
        if row is not None:
            from engine.api.runs import read_status

            status = read_status(row.run_dir)
            reason = status.get("exit_reason")
            text = f"{display_path(row.run_dir)}/"
            if reason and not row.live:
                text += f" · {reason}"
            if row.state == RunState.CRASHED:
                text += " · the process is gone without a word (killed?): r resumes from its last checkpoint"
        self.query_one("#runs-detail", Static).update(Text(text, no_wrap=True, overflow="ellipsis"))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        row = self.current()
        if row:
            others = sorted(d for d in self.marked if d != row.run_dir)
            self.post_message(OpenRuns([row.run_dir, *others]))

    def action_mark(self) -> None:
        row = self.current()
        if row:
            self.marked ^= {row.run_dir}
            self.query_one(DataTable).update_cell(str(row.run_dir), "id", self._cells(row, self.studio_app.clock())[0])
            self._hint()

    def action_compare(self) -> None:
        chosen = sorted(self.marked)
        if len(chosen) < 2:
            self.notify("mark two or more runs with space first", severity="warning")
            return
        self.post_message(OpenRuns(chosen))

    def action_stop(self) -> None:
        row = self.current()
        if row is None:
            return
        reply = runs.stop(row.run_dir)
        self.notify(reply.message, severity="information" if reply.asked else "warning")
        self.scan()

    def action_resume(self) -> None:
        row = self.current()
        if row is None:
            return
        refusal = runs.resume_refusal(row.run_id, row.state)
        if refusal:
            self.notify(refusal, severity="warning")
            return
        self._resume(row.run_dir)

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-resume", name="resume")
    def _resume(self, run_dir: Path) -> None:
        launcher.resume(run_dir)
        self.post_message(OpenRuns([run_dir]))

    def action_delete(self) -> None:
        row = self.current()
        if row is None:
            return
        try:
            runs.Run(row.run_dir).refuse_live("deleted")  # asked again when the answer is yes: it may change meanwhile
        except EngineError as refusal:
            self.notify(str(refusal), title="not deleted", severity="error")
            return
        self.app.push_screen(
            ConfirmModal("Delete run?", f"Delete {row.run_dir} with its checkpoints and logs? This cannot be undone.",
                         yes="Delete", danger=True),
            lambda yes: self._delete(row.run_dir) if yes else None)

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-delete", name="delete")
    def _delete(self, run_dir: Path) -> None:
        runs.delete(run_dir)  # refuses (RunBusy) a run resumed since the question, by this studio or another
        self.post_message(RunsScanned(runs.runs(self.studio_app.runs_dir)))

    def action_new(self) -> None:
        self.studio_app.action_show_tab("presets")

    # ---- export

    def action_export(self) -> None:
        row = self.current()
        if row is None:
            return
        if self.exporting:
            self.notify(f"already exporting to {display_path(self.exporting.out_dir)}/: wait for it to finish",
                        severity="warning", markup=False)
            return
        choices = [c for c in list_checkpoint_choices(self.studio_app.runs_dir) if c.run_id == row.run_id]
        if not choices:
            self.notify(f"{row.run_id} has no complete checkpoint yet", severity="warning", markup=False)
            return
        self.app.push_screen(ExportModal(row.run_id, choices), self._start_export)

    def _start_export(self, request: ExportRequest | None) -> None:
        if request is None or self.exporting:
            return
        self.exporting = request
        self._hint()
        self._export(request)

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-export", name="export")
    def _export(self, request: ExportRequest) -> None:
        try:
            result = exporter.run(request)
        except Exception as error:  # noqa: BLE001 - a refusal (the engine's paragraph) or a bug named as one
            self.post_message(ExportFailed(request, shown_error(error)))
            return
        self.post_message(ExportDone(result))

    def on_export_done(self, message: ExportDone) -> None:
        result = message.result
        self.exporting = None
        self._hint()
        shown = display_path(result.written)
        name = exporter.ollama_name(result.request.out_dir)
        self.notify(f"{result.request.label} → {shown} ({result.request.dtype}, {result.size})\n"
                    f"{exporter.how_to_use(result.request.fmt, shown, name)}",
                    title="exported", timeout=30, markup=False)

    def worker_failed(self, worker: Worker) -> None:
        if worker.group == "runs-export":  # it raised past its own except (a bug): allow the next export
            self.exporting = None
            self._hint()

    def on_export_failed(self, message: ExportFailed) -> None:
        self.exporting = None
        self._hint()
        self.studio_app.show_error(f"export of {message.request.label} failed", message.error)
