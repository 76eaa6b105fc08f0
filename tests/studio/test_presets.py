"""The preset editor: inline validation with the CLI's words, launch through the launcher only when valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, Input

from engine.config import (
    PROJECT_ROOT,
    Preset,
    load_preset,
    preset_from_dict,
)
from engine.errors import PresetError
from engine.hardware.estimate import GiB, Target
from studio import launcher
from studio.app import StudioApp
from studio.screens.confirm_modal import ConfirmModal
from studio.screens.launch_modal import LaunchModal
from studio.screens.prompt_modal import PromptModal
from studio.screens.text_modal import TextModal
from studio.widgets.presets.preset_editor import PresetEditor
from studio.widgets.presets.presets_pane import PresetsPane
from tests.support.fake_runs import make_run
from tests.support.wait import ready, settle, until

TINY = PROJECT_ROOT / "presets" / "tiny.toml"


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, runs_dir: Path) -> dict[str, list]:
    """Record what reaches the launcher; launch() returns a fake run directory instead of starting one."""
    seen: dict[str, list] = {"check": [], "launch": []}
    real_check = launcher.check

    def check(preset: Preset, source: str) -> None:
        seen["check"].append(preset)
        real_check(preset, source)

    def launch(preset: Preset) -> Path:
        seen["launch"].append(preset)
        return make_run(runs_dir, f"20250101-00000{len(seen['launch'])}-{preset.name}", state="queued")

    monkeypatch.setattr(launcher, "check", check)
    monkeypatch.setattr(launcher, "launch", launch)
    # The launch dialog's device: a roomy fake (tests/studio/test_launch_estimate.py covers the real one).
    monkeypatch.setattr(launcher, "detect_target", lambda preset: Target("cpu", "float32", 64 * GiB, "test CPU"))
    return seen


async def confirm_launch(pilot) -> None:
    """Press Launch in the estimate dialog once the estimate has arrived."""
    await until(pilot, lambda: isinstance(pilot.app.screen, LaunchModal) and pilot.app.screen.result is not None,
                timeout=30, what="the launch estimate")
    await pilot.click("#go")
    await until(pilot, lambda: not isinstance(pilot.app.screen, LaunchModal), what="the dialog to close")
    await pilot.pause()  # the dialog's answer reaches the pane through call_next


async def open_presets(pilot) -> tuple[PresetsPane, PresetEditor]:
    await ready(pilot)
    await pilot.press("1")
    pane = pilot.app.query_one(PresetsPane)
    assert pane.path == TINY  # the built-in default is selected first
    return pane, pilot.app.query_one(PresetEditor)


async def test_invalid_value_shows_the_cli_message_and_launches_nothing(runs_dir: Path, calls) -> None:
    """Guards against the editor accepting values the CLI would refuse, showing a different message
    than the CLI, or launching (even preflighting) an invalid preset."""
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        pane, editor = await open_presets(pilot)
        await editor.set_field("pretrain.batch_size", "0")
        await pilot.pause()
        data = load_preset(TINY).model_dump(mode="json")
        data["pretrain"]["batch_size"] = 0
        with pytest.raises(PresetError) as cli_error:
            preset_from_dict(data, pane.source)
        assert pane.error == str(cli_error.value)  # word for word what `minimind-studio run` prints
        assert "pretrain.batch_size" in str(app.query_one("#preset-status").render())
        assert editor.rows["pretrain.batch_size"].has_class("invalid")
        assert app.query_one("#launch", Button).disabled
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert calls == {"check": [], "launch": []}
        assert app.query_one("#tabs").active == "presets"


async def test_valid_edit_launches_the_edited_preset_and_opens_the_monitor(runs_dir: Path, calls) -> None:
    """Guards against launching the file instead of the edits, losing the runs folder the studio watches,
    or staying on the editor after a launch."""
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        pane, editor = await open_presets(pilot)
        await editor.set_field("pretrain.batch_size", "8")
        await pilot.pause()
        assert pane.error is None and editor.rows["pretrain.batch_size"].has_class("edited")
        command = str(app.query_one("#preset-command").render())
        assert "minimind-studio run presets/tiny.toml --detach --set pretrain.batch_size=8" in command
        await pilot.press("ctrl+y")
        assert app.clipboard.startswith("minimind-studio run presets/tiny.toml --detach --set pretrain.batch_size=8")
        await pilot.press("ctrl+r")
        await confirm_launch(pilot)
        await until(pilot, lambda: app.query_one("#tabs").active == "monitor", timeout=30, what="monitor")
        (launched,) = calls["launch"]
        assert launched.pretrain.batch_size == 8 and launched.name == "tiny"
        assert Path(launched.out_dir) == runs_dir.resolve()
        assert len(calls["check"]) == 1 and app.followed == [runs_dir / "20250101-000001-tiny"]


async def test_preflight_error_is_shown_instead_of_launching(runs_dir: Path, calls) -> None:
    """Guards against a launch that starts a detached run doomed to fail on a missing data file: the
    CLI's preflight runs first (in a worker, it imports torch) and its message is shown."""
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        pane, editor = await open_presets(pilot)
        await editor.set_field("pretrain.data_path", "no/such/file.jsonl")
        await pilot.pause()
        assert pane.error is None  # a valid preset as far as the schema goes
        await pilot.press("ctrl+r")
        await confirm_launch(pilot)
        await until(pilot, lambda: not pane.launching, timeout=30, what="preflight")
        assert calls["launch"] == [] and len(calls["check"]) == 1
        status = str(app.query_one("#preset-status").render())
        assert "not launched" in status and "pretrain.data_path" in status and "file not found" in status


async def test_drafts_diff_revert_and_save_as(runs_dir: Path, tmp_path: Path) -> None:
    """Guards against edits lost by browsing to another preset, a diff that shows every field (raw
    file vs full dump) instead of the edits, and a 'save as' that writes what the CLI cannot load."""
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        pane, editor = await open_presets(pilot)
        await editor.set_field("pretrain.batch_size", "8")
        await pilot.pause()
        pane.load(PROJECT_ROOT / "presets" / "minimind-26m.toml")
        assert editor.data["pretrain"]["batch_size"] != 8
        pane.load(TINY)
        assert editor.data["pretrain"]["batch_size"] == 8  # the draft came back
        await pilot.press("ctrl+g")
        assert editor.data["pretrain"]["batch_size"] == 16  # revert drops it
        await editor.set_field("pretrain.batch_size", "8")
        await pilot.pause()
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert isinstance(app.screen, TextModal)
        diff = app.screen.plain
        changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        assert changed == ["-batch_size = 16", "+batch_size = 8"]
        await pilot.press("escape")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, PromptModal)
        target = tmp_path / "mine.toml"
        app.screen.query_one(Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        saved = load_preset(target)
        assert saved.pretrain.batch_size == 8 and saved.model == load_preset(TINY).model
        assert pane.path == target


async def test_empty_runs_folder_offers_the_tiny_preset(runs_dir: Path, calls, monkeypatch) -> None:
    """Guards against a first start that leaves a new user on an empty table: the studio offers to
    start the built-in tiny preset and takes them to its monitor."""
    monkeypatch.setattr(launcher, "check", lambda preset, source: calls["check"].append(preset))
    app = StudioApp(runs_dir, offer_tiny=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the offer")
        await ready(pilot)
        await pilot.press("y")
        await confirm_launch(pilot)
        await until(pilot, lambda: app.query_one("#tabs").active == "monitor", timeout=30, what="monitor")
        assert [p.name for p in calls["launch"]] == ["tiny"]
