"""The runs table: live listing from disk, crashed detection, stop / resume / delete."""

from __future__ import annotations

import os
from pathlib import Path

from textual.widgets import DataTable

from studio import launcher
from studio.app import StudioApp
from studio.screens.confirm_modal import ConfirmModal
from studio.widgets.runs.runs_pane import RunsPane
from tests.support.fake_runs import T0, make_run
from tests.support.wait import ready, settle, until


def cell(app: StudioApp, run_dir: Path, column: str) -> str:
    return str(app.query_one(DataTable).get_cell(str(run_dir), column))


async def test_crashed_run_is_shown_as_crashed_and_new_cli_runs_appear(runs_dir: Path) -> None:
    """Guards against a run killed with -9 (status still 'running', its pid gone) showing as running
    forever, and against runs started from the CLI not showing up until the studio restarts."""
    dead = make_run(runs_dir, "20250101-000000-tiny", state="running", stage="pretrain", step=40, total=100, loss=3.21)
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05, clock=lambda: T0)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        assert cell(app, dead, "state") == "crashed"
        assert cell(app, dead, "step") == "40/100" and cell(app, dead, "loss") == "3.2100" and cell(app, dead, "age") == "1h"
        live = make_run(runs_dir, "20250101-000100-cli", state="running", pid=os.getpid())
        await until(pilot, lambda: str(live) in app.query_one(RunsPane).rows, what="the CLI run to appear")
        assert cell(app, live, "state") == "running"
        table = app.query_one(DataTable)
        assert table.get_row_at(0)[0] == live.name  # newest first


async def test_stop_creates_the_control_file_only_for_live_runs(runs_dir: Path) -> None:
    """Guards against 'stop' doing nothing (the run only watches control/stop) or touching finished runs."""
    live = make_run(runs_dir, "20250101-000100-live", state="running", pid=os.getpid())
    done = make_run(runs_dir, "20250101-000000-done", state="finished")
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        pane = app.query_one(RunsPane)
        pane.select_run(live)
        await pilot.press("s")
        assert (live / "control" / "stop").exists()
        pane.select_run(done)
        await pilot.press("s")
        assert not (done / "control" / "stop").exists()


async def test_delete_asks_first_and_refuses_live_runs(runs_dir: Path) -> None:
    """Guards against one keypress destroying a run's checkpoints, and against deleting a run that a
    live process is still writing to."""
    live = make_run(runs_dir, "20250101-000100-live", state="running", pid=os.getpid())
    old = make_run(runs_dir, "20250101-000000-old", state="failed")
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        pane = app.query_one(RunsPane)
        pane.select_run(live)
        await pilot.press("d")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmModal) and live.exists()

        pane.select_run(old)
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("enter")  # the focused button of a destructive question is "no"
        await pilot.pause()
        assert old.exists() and not isinstance(app.screen, ConfirmModal)

        await pilot.press("d")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot)
        await until(pilot, lambda: not old.exists() and str(old) not in pane.rows, what="delete")


async def test_resume_goes_through_the_launcher_and_opens_the_monitor(runs_dir: Path, monkeypatch) -> None:
    """Guards against resume bypassing the launcher (untestable) or resuming a finished run."""
    stopped = make_run(runs_dir, "20250101-000000-stopped", state="stopped")
    finished = make_run(runs_dir, "20250101-000100-done", state="finished")
    calls: list[Path] = []
    monkeypatch.setattr(launcher, "resume", lambda run_dir: calls.append(run_dir) or 12345)
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        pane = app.query_one(RunsPane)
        pane.select_run(finished)
        await pilot.press("r")
        await settle(pilot)
        assert calls == []
        pane.select_run(stopped)
        await pilot.press("r")
        await until(pilot, lambda: app.query_one("#tabs").active == "monitor", what="monitor")
        assert calls == [stopped] and app.followed == [stopped]
