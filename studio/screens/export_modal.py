"""Export a run's checkpoint: which checkpoint, Hugging Face or GGUF, the dtype, the output folder.

Dismisses with an ExportRequest, or None on Cancel / Escape. The dtype menu always lists the chosen
format's own names (float32... for Hugging Face, llama.cpp's f16... for GGUF) and falls back to that
format's default when the format changes. The folder follows the checkpoint and the format
(exports/<run id>-<stage>-<format>) until the user types their own.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from engine.api.export import FORMATS, default_out_dir
from studio.checkpoint_list import CheckpointChoice
from studio.exporter import ExportRequest
from studio.paths import display_path


class ExportModal(ModalScreen[ExportRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, run_id: str, choices: list[CheckpointChoice]) -> None:
        super().__init__()
        self.run_id = run_id
        self.choices = {str(choice.path): choice for choice in choices}  # newest first; the first is preselected
        self.suggested = ""  # the folder last filled in for the user; a different value is theirs to keep

    def compose(self) -> ComposeResult:
        first = next(iter(self.choices))
        with Vertical(id="dialog"):
            yield Static(f"Export {self.run_id}", id="dialog-title", markup=False)
            with Horizontal(classes="export-line"):
                yield Label("checkpoint")
                yield Select([(f"{c.stage} · {c.name}", key) for key, c in self.choices.items()], value=first,
                             allow_blank=False, compact=True, id="export-checkpoint")
            with Horizontal(classes="export-line"):
                yield Label("format")
                yield Select([(f.label, f.key) for f in FORMATS.values()], value="hf", allow_blank=False,
                             compact=True, id="export-format")
            with Horizontal(classes="export-line"):
                yield Label("dtype")
                yield Select(self._dtype_options("hf"), value=FORMATS["hf"].default_dtype, allow_blank=False,
                             compact=True, id="export-dtype")
            with Horizontal(classes="export-line"):
                yield Label("to folder")
                yield Input(id="export-dir", compact=True)
            yield Static("", id="export-note", classes="help", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Export", id="export", variant="primary")

    def on_mount(self) -> None:
        self._suggest_folder()
        self.query_one("#export-format", Select).focus()

    @staticmethod
    def _dtype_options(fmt: str) -> list[tuple[str, str]]:
        choice = FORMATS[fmt]
        return [(f"{dtype} (default)" if dtype == choice.default_dtype else dtype, dtype) for dtype in choice.dtypes]

    # ---- what is chosen

    @property
    def checkpoint(self) -> CheckpointChoice:
        return self.choices[str(self.query_one("#export-checkpoint", Select).value)]

    @property
    def fmt(self) -> str:
        return str(self.query_one("#export-format", Select).value)

    @property
    def dtype(self) -> str:
        return str(self.query_one("#export-dtype", Select).value)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "export-format":
            dtype = self.query_one("#export-dtype", Select)
            dtype.set_options(self._dtype_options(self.fmt))
            dtype.value = FORMATS[self.fmt].default_dtype
        self._suggest_folder()

    def _suggest_folder(self) -> None:
        folder = self.query_one("#export-dir", Input)
        if folder.value in ("", self.suggested):
            self.suggested = default_out_dir(self.run_id, self.checkpoint.stage, self.fmt)
            folder.value = self.suggested
        self._note()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._note()

    def _note(self) -> None:
        """Say what will be written where, and warn before files of an earlier export are replaced."""
        text = self.query_one("#export-dir", Input).value.strip()
        note = self.query_one("#export-note", Static)
        if not text:
            note.update("give the folder to write into")
            return
        folder = Path(text).expanduser()
        replaced = " (it exists: files of the same name are replaced)" if folder.exists() else ""
        note.update(f"writes {FORMATS[self.fmt].writes} into {display_path(folder)}/{replaced}")

    # ---- answers

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_export()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_export() if event.button.id == "export" else self.action_cancel()

    def action_export(self) -> None:
        text = self.query_one("#export-dir", Input).value.strip()
        if not text:
            self.query_one("#export-dir", Input).focus()
            return
        choice = self.checkpoint
        self.dismiss(ExportRequest(choice.path, choice.label, self.fmt, self.dtype,
                                   Path(text).expanduser().resolve()))

    def action_cancel(self) -> None:
        self.dismiss(None)
