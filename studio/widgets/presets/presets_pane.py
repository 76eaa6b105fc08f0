"""The Presets tab: pick a preset, edit it through the schema-generated form, launch it.

Validation runs on every edit with the CLI's own message; an invalid preset cannot be launched.
Launching first shows the pre-flight estimate (LaunchModal: memory, fit, time); once confirmed, the
CLI's preflight runs in a thread worker (it imports torch), then `studio.launcher`.
"""

from __future__ import annotations

import copy
import shlex
import sys
from pathlib import Path
from typing import Any

from rich.syntax import Syntax
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, OptionList, Static
from textual.widgets.option_list import Option

from engine.config import PROJECT_ROOT, Preset, load_preset
from engine.errors import EngineError, PresetError
from studio import launcher
from studio.errors import shown_error
from studio.messages import LaunchDone, LaunchFailed, OpenRuns
from studio.paths import display_path
from studio.preset_form import (
    cli_command,
    diff_against_file,
    edited_fields,
    list_presets,
    preset_arg,
    validate,
)
from studio.screens.confirm_modal import ConfirmModal
from studio.screens.launch_modal import LaunchModal, TargetCache
from studio.screens.prompt_modal import PromptModal
from studio.screens.text_modal import TextModal
from studio.widgets.pane import Pane
from studio.widgets.presets.preset_editor import PresetEditor

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _merge(base: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in raw.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def read_form_data(path: Path) -> dict[str, Any]:
    """The values to edit: the validated preset, or for a broken file its raw values over the defaults
    (so the form still opens and shows what to fix)."""
    try:
        return load_preset(path).model_dump(mode="json")
    except PresetError:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            raw = {}
        raw.setdefault("name", path.stem)
        return _merge(Preset().model_dump(mode="json"), raw)


def where_is(path: Path) -> str:
    """The preset's file as shown above the form; shipped presets outside the working dir say so."""
    shown = display_path(path)
    shipped = path.resolve().parent == (PROJECT_ROOT / "presets").resolve()
    return "built-in preset" if shipped and shown.startswith(("/", "~")) else shown


class PresetsPane(Pane):
    DEFAULT_FOCUS = "#preset-list"
    BINDINGS = [
        Binding("ctrl+r", "launch", "Launch"),
        Binding("ctrl+s", "save_as", "Save as"),
        Binding("ctrl+o", "diff", "Diff vs file"),
        Binding("ctrl+y", "copy_command", "Copy CLI"),
        Binding("ctrl+g", "revert", "Revert edits"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path: Path | None = None
        self.base: dict[str, Any] = {}
        self.preset: Preset | None = None
        self.error: str | None = None
        self.launching = False
        self.drafts: dict[Path, dict[str, Any]] = {}  # unsaved edits per preset, kept while browsing the list
        self.targets: TargetCache = {}  # the devices the estimates found, for the session (finding one loads torch)

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="preset-side"):
                yield OptionList(id="preset-list")
                yield Button("Launch ^r", id="launch", variant="success")
            with Vertical(id="preset-main"):
                yield Static("", id="preset-title")
                yield PresetEditor(id="preset-editor")
                yield Static("", id="preset-status")
                yield Static("", id="preset-command", markup=False)

    def on_mount(self) -> None:
        self.refresh_list()
        presets = self.presets
        if presets:
            default = next((p for p in presets if p.stem == "tiny"), presets[0])
            self.load(default)

    # ---- list

    def refresh_list(self) -> None:
        self.presets = list_presets()
        options = self.query_one("#preset-list", OptionList)
        shipped = (PROJECT_ROOT / "presets").resolve()
        with self.prevent(OptionList.OptionHighlighted):  # rebuilding the list is not the user picking
            options.clear_options()
            for path in self.presets:
                where = "" if path.parent.resolve() == shipped else "  [dim](user)[/]"
                options.add_option(Option(f"{path.stem}{where}", id=str(path)))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id and Path(event.option.id) != self.path:
            self.load(Path(event.option.id))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.query_one(PresetEditor).focus()

    def load(self, path: Path, keep_draft: bool = True) -> None:
        editor = self.query_one(PresetEditor)
        if self.path is not None and editor.data != self.base:
            self.drafts[self.path] = copy.deepcopy(editor.data)  # moving through the list keeps the edits
        self.path = path
        self.base = read_form_data(path)
        editor.load(self.drafts.get(path, self.base) if keep_draft else self.base)
        options = self.query_one("#preset-list", OptionList)
        index = next((i for i, p in enumerate(self.presets) if p == path), None)
        if index is not None and options.highlighted != index:
            with self.prevent(OptionList.OptionHighlighted):
                options.highlighted = index
        description = self.base.get("description") or ""
        self.query_one("#preset-title", Static).update(f"[b]{path.stem}[/]  [dim]{where_is(path)}[/]\n{description}")
        self.revalidate()

    # ---- editing

    @property
    def source(self) -> str:
        """How messages name the preset: as the shown CLI command names it (no checkout-specific paths)."""
        return preset_arg(self.path) if self.path else "preset"

    def on_preset_editor_changed(self, event: PresetEditor.Changed) -> None:
        self.revalidate()

    def revalidate(self) -> None:
        editor = self.query_one(PresetEditor)
        self.preset, self.error, invalid = validate(editor.data, self.source)
        edits = edited_fields(self.base, editor.data, editor.fields) if self.path else []
        editor.mark(invalid, {spec.key for spec, _ in edits})
        status = self.query_one("#preset-status", Static)
        if self.error:
            status.update(f"[b red]✗[/] {self.error}")
            status.set_class(True, "error")
        else:
            where = f"; launches into {display_path(self.studio_app.runs_dir)}/"
            status.update(f"[b green]✓[/] valid{f', {len(edits)} edited field(s)' if edits else ''}{where}")
            status.set_class(False, "error")
        self.query_one("#launch", Button).disabled = self.preset is None or self.launching
        self.query_one("#preset-command", Static).update(self.command_text())

    def command(self) -> tuple[str, list[str]]:
        editor = self.query_one(PresetEditor)
        edits = edited_fields(self.base, editor.data, editor.fields)
        command, unexpressible = cli_command(self.path or Path("preset.toml"), edits)
        if Path(str(editor.data.get("out_dir", "runs"))).resolve() != self.studio_app.runs_dir:
            command += " --set " + shlex.quote(f"out_dir={display_path(self.studio_app.runs_dir)}")
        return command, unexpressible

    def command_text(self) -> str:
        command, unexpressible = self.command()
        if unexpressible:
            return f"$ {command}\n(cleared fields {', '.join(unexpressible)} cannot be given with --set: save the preset)"
        return f"$ {command}"

    # ---- actions

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "launch":
            self.action_launch()

    def action_launch(self) -> None:
        """Show the edited preset's estimate, and launch it if the user confirms; an invalid one launches nothing."""
        if self.preset is None:
            self.notify(self.error or "no preset loaded", title="cannot launch", severity="error")
            return
        if self.launching:
            return
        launched = self.preset.model_copy(deep=True)
        launched.out_dir = str(self.studio_app.runs_dir)  # where the studio looks
        source = self.source
        self.app.push_screen(LaunchModal(launched, self.targets),
                             lambda confirmed: self._launch_confirmed(launched, source, confirmed))

    def _launch_confirmed(self, preset: Preset, source: str, confirmed: bool | None) -> None:
        if not confirmed or self.launching:
            return
        self.launching = True
        self.query_one("#launch", Button).disabled = True
        self.notify(f"checking and launching {preset.name}…")
        self._launch(preset, source)

    @work(thread=True, exclusive=True, exit_on_error=False, group="launch", name="launch")
    def _launch(self, preset: Preset, source: str) -> None:
        try:
            launcher.check(preset, source)
        except EngineError as error:  # a preset or data problem, said as the CLI says it; a bug goes to the modal
            self.post_message(LaunchFailed(shown_error(error).message))
            return
        run_dir = launcher.launch(preset)
        self.post_message(LaunchDone(run_dir))

    def on_launch_failed(self, message: LaunchFailed) -> None:
        self._launch_finished()
        status = self.query_one("#preset-status", Static)
        status.update(f"[b red]✗ not launched:[/] {message.message}")
        status.set_class(True, "error")
        self.notify(message.message, title="not launched", severity="error", timeout=10)

    def on_launch_done(self, message: LaunchDone) -> None:
        self._launch_finished()
        self.notify(f"launched {message.run_dir.name}")
        self.post_message(OpenRuns([message.run_dir]))

    def _launch_finished(self) -> None:
        self.launching = False
        self.query_one("#launch", Button).disabled = self.preset is None

    def worker_failed(self, worker: Any) -> None:
        self._launch_finished()

    def launch_builtin(self, name: str) -> None:
        path = PROJECT_ROOT / "presets" / f"{name}.toml"
        self.load(path)
        self.action_launch()

    def action_copy_command(self) -> None:
        command, _ = self.command()
        self.app.copy_to_clipboard(command)
        self.notify("CLI command copied")

    def action_revert(self) -> None:
        if self.path:
            self.drafts.pop(self.path, None)
            self.query_one(PresetEditor).data = copy.deepcopy(self.base)  # so load() keeps no draft
            self.load(self.path, keep_draft=False)

    def action_diff(self) -> None:
        if self.path is None:
            return
        if self.preset is None:
            self.notify(self.error or "", title="invalid preset: nothing to diff", severity="error")
            return
        diff = diff_against_file(self.preset, self.path) or "(no differences)"
        self.app.push_screen(TextModal(f"{self.path.name}: edited vs on disk", Syntax(diff, "diff", theme="ansi_dark"), diff))

    def action_save_as(self) -> None:
        if self.preset is None:
            self.notify(self.error or "", title="invalid preset: not saved", severity="error")
            return
        default = Path.cwd() / "presets" / f"{self.preset.name}.toml"
        self.app.push_screen(PromptModal("Save preset as", str(default), "Enter to save, Escape to cancel. "
                                         "Comments of the original file are not kept."), self._save_to)

    def _save_to(self, answer: str | None) -> None:
        if not answer or self.preset is None:
            return
        path = Path(answer).expanduser()
        if path.suffix != ".toml":
            path = path.with_suffix(".toml")
        preset = self.preset

        def write(confirmed: bool | None = True) -> None:
            if not confirmed:
                return
            from engine.config import save_preset

            path.parent.mkdir(parents=True, exist_ok=True)
            save_preset(preset, path)
            self.notify(f"saved {display_path(path)}")
            if self.path is not None:  # the edits now live in the new file, not as a draft of the old one
                self.drafts.pop(self.path, None)
                self.query_one(PresetEditor).data = copy.deepcopy(self.base)
            self.refresh_list()
            self.load(path)

        if path.exists():
            self.app.push_screen(ConfirmModal("Overwrite?", f"{path} exists. Replace it?", yes="Replace", danger=True), write)
        else:
            write()
