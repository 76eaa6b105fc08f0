"""Errors in the studio: the engine's paragraph for what the user can fix, a named bug for anything else."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from textual.widgets import Collapsible, Static

from engine.config import PROJECT_ROOT, load_preset
from engine.errors import PresetError
from engine.runs.run import Run
from studio import launcher
from studio.app import StudioApp
from studio.errors import BUG_NOTE, shown_error
from studio.screens.confirm_modal import ConfirmModal
from studio.screens.error_modal import ErrorModal
from studio.screens.launch_modal import LaunchModal
from studio.widgets.runs.runs_pane import RunsPane
from tests.support.fake_runs import make_run
from tests.support.wait import ready, settle, until


def raise_from_torch_like_code() -> None:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_an_engine_error_is_its_paragraph_and_anything_else_is_a_named_bug() -> None:
    """Guards against the studio showing str(error) for everything: a torch RuntimeError then read like a
    preset mistake (no type, no traceback), and an engine message picked apart or shown with its class."""
    preset = shown_error(PresetError("presets/x.toml: field 'seed' (got 'forty-two'): Input should be a valid\n"
                                     "integer. Fix the field(s) in the file or with --set, then run again."))
    assert preset.message.startswith("presets/x.toml: field 'seed'") and "\n" not in preset.message
    assert "PresetError" not in preset.message and preset.traceback == "" and not preset.bug

    try:
        raise_from_torch_like_code()
    except RuntimeError as error:
        bug = shown_error(error)
    assert bug.bug and bug.message == f"RuntimeError: CUDA error: an illegal memory access was encountered\n{BUG_NOTE}"
    assert bug.traceback.startswith("Traceback") and "raise_from_torch_like_code" in bug.traceback
    assert shown_error(KeyError()).message.startswith("KeyError: (no message)")


def go_live(run_dir: Path) -> None:
    """What `minimind-studio resume` in another terminal does to status.json: this (live) process owns it."""
    run = Run(run_dir)
    run.claim()  # this (live) process's pid, host and start time
    run.start()


async def delete_current(pilot, before_yes=lambda: None) -> None:
    await pilot.press("d")
    await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmModal), what="the delete question")
    before_yes()
    await pilot.press("y")
    await until(pilot, lambda: isinstance(pilot.app.screen, ErrorModal), what="the error modal")


async def test_delete_shows_a_refusal_as_a_paragraph_and_a_failure_as_a_bug(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against a refusal the user can act on (the run was resumed while the delete question was
    open) showing as a crash, and against an unexpected failure inside the delete worker losing its type
    and traceback (the bare RuntimeError the pane used to raise for the refusal looked the same)."""
    old = make_run(runs_dir, "20250101-000000-old", state="failed")
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        pane = app.query_one(RunsPane)
        pane.select_run(old)
        await delete_current(pilot, before_yes=lambda: go_live(old))
        modal = app.screen
        assert isinstance(modal, ErrorModal) and modal.title_text == "delete failed"
        assert modal.message == (f"run {old.name} is running (pid {os.getpid()}); stop it first with: "
                                 f"minimind-studio stop {old.name}")
        assert not modal.traceback and not modal.query(Collapsible) and old.exists()
        await pilot.press("escape")

        Run(old).fail("it failed")
        await until(pilot, lambda: not pane.rows[str(old)].live, what="the run to read as failed again")

        def boom(src: Path, dst: Path) -> None:
            raise RuntimeError("injected: the disk went away")

        from engine.runs import manage

        # The delete's first change on disk (the rename out of sight) fails: nothing is lost, the run stays.
        monkeypatch.setattr(manage, "os", SimpleNamespace(rename=boom, getpid=os.getpid))
        await delete_current(pilot)
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert modal.message == f"RuntimeError: injected: the disk went away\n{BUG_NOTE}"
        folded = modal.query_one("#error-traceback", Collapsible)
        assert folded.collapsed and "in boom" in modal.traceback and "in _delete" in modal.traceback
        assert modal.plain.endswith(modal.traceback)  # Copy gives whoever fixes it the frames too
        await pilot.press("escape")
        await settle(pilot)
        assert old.exists() and not isinstance(app.screen, ErrorModal)


async def test_a_bug_while_estimating_names_its_type_and_shows_the_traceback(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against a non-engine exception in the launch dialog's estimate (a torch RuntimeError while
    probing the GPU) reading like advice about the preset: its type, a bug note and its frames are shown,
    and launching stays possible."""

    def detect(preset) -> None:
        raise_from_torch_like_code()

    monkeypatch.setattr(launcher, "detect_target", detect)
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        app.push_screen(LaunchModal(load_preset(PROJECT_ROOT / "presets" / "tiny.toml"), {}))
        await until(pilot, lambda: isinstance(app.screen, LaunchModal) and app.screen.error is not None,
                    what="the estimate to fail")
        modal = app.screen
        verdict = str(modal.query_one("#launch-verdict", Static).render())
        assert verdict == f"Could not estimate: RuntimeError: CUDA error: an illegal memory access was encountered\n{BUG_NOTE}"
        details = str(modal.query_one("#launch-estimate", Static).render())
        assert details.startswith("Traceback") and "raise_from_torch_like_code" in details
        assert not modal.query_one("#go").disabled
