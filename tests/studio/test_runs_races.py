"""Two studios and the CLI on one runs folder, with real runs: every studio rebuilds its table from disk,
sees what the others and the CLI do, and a resume, stop or delete racing another is refused with the
engine's paragraph, never done twice. The CLI-only races are in tests/engine/test_run_races.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import DataTable

from engine.events import iter_events
from engine.runs.run_dir import read_status
from studio.app import StudioApp
from studio.screens.confirm_modal import ConfirmModal
from studio.screens.error_modal import ErrorModal
from studio.widgets.runs.runs_pane import RunsPane
from tests.support.runs_cli import cli, copy_run, engine_processes
from tests.support.wait import ready, until

BUSY = ("is starting", "being started", "already running", "is running")


def state(app: StudioApp, run_dir: Path) -> str | None:
    """The state the app's runs table shows for run_dir (None: no such row)."""
    if str(run_dir) not in app.query_one(RunsPane).rows:
        return None
    return str(app.query_one(DataTable).get_cell(str(run_dir), "state"))


def checkpoints_since_last_start(run_dir: Path) -> int:
    events = list(iter_events(run_dir / "events.jsonl"))
    start = max(i for i, e in enumerate(events) if e.kind == "stage_start")
    return [e.kind for e in events[start:]].count("checkpoint")


def stopped_and_gone(run_dir: Path) -> bool:
    return read_status(run_dir).get("state") == "stopped" and not engine_processes(run_dir)


async def cli_async(*args: str):
    """The CLI in a thread: the studios keep handling their messages while it runs."""
    return await asyncio.to_thread(cli, *args)


@pytest.mark.slow
async def test_a_studio_opened_on_a_live_run_follows_what_the_cli_does(stopped_run: Path, live_runs: Path) -> None:
    """Guards against the studio knowing only the runs it started itself: opened while a run started from
    a shell is training, it shows it running, then stopped, then gone, as the CLI stops and deletes it."""
    runs = live_runs
    run_dir = copy_run(stopped_run, runs)
    resumed = cli("resume", run_dir.name, "--detach", "--out-dir", str(runs))
    assert resumed.returncode == 0, resumed.stderr
    app = StudioApp(runs, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        await until(pilot, lambda: state(app, run_dir) == "running", timeout=120, what="the CLI's run shown running")
        assert (await cli_async("stop", run_dir.name, "--out-dir", str(runs))).returncode == 0
        await until(pilot, lambda: state(app, run_dir) == "stopped" and stopped_and_gone(run_dir), timeout=120,
                    what="the stop shown")
        assert (await cli_async("delete", run_dir.name, "--yes", "--out-dir", str(runs))).returncode == 0
        await until(pilot, lambda: state(app, run_dir) is None, what="the deleted run to leave the table")


@pytest.mark.slow
async def test_two_studios_resume_stop_and_delete_one_run_at_once(stopped_run: Path, live_runs: Path) -> None:
    """Guards against two studios on one runs folder both resuming a run (the second's table still said
    stopped: a table is always up to a poll behind), stopping it into two checkpoints, or one deleting it
    while the other's resume is starting it (the delete question answered after the resume began): each
    race ends with one winner, and the other studio shows the engine's refusal in a dialog.

    Studio b re-reads the runs folder only when told to (`rescan`), so its table is stale for certain when
    it acts; studio a polls as usual."""
    runs = live_runs
    run_dir = copy_run(stopped_run, runs)
    a, b = StudioApp(runs, offer_tiny=False, poll_s=0.05), StudioApp(runs, offer_tiny=False, poll_s=3600)
    async with a.run_test(size=(120, 32)) as pa, b.run_test(size=(120, 32)) as pb:
        await ready(pa)
        await ready(pb)
        pane_a, pane_b = a.query_one(RunsPane), b.query_one(RunsPane)

        async def rescan(shown: str) -> None:
            pane_b.scan()
            await until(pb, lambda: state(b, run_dir) == shown, what=f"studio b to show {shown}")

        # a resumes the stopped run; b, whose table still says stopped, resumes it too: b is refused.
        pane_a.select_run(run_dir)
        pane_b.select_run(run_dir)
        await pa.press("r")
        await until(pa, lambda: a.query_one("#tabs").active == "monitor", what="a's resume to open the monitor")
        assert state(b, run_dir) == "stopped"
        await pb.press("r")
        await until(pb, lambda: isinstance(b.screen, ErrorModal), timeout=30, what="b's resume refused")
        assert any(word in b.screen.message for word in BUSY), b.screen.message
        await until(pa, lambda: read_status(run_dir).get("state") == "running", timeout=120, what="the run to train")
        assert len(engine_processes(run_dir)) == 1
        await pb.press("escape")

        # Both press s: one clean stop, one checkpoint.
        a.action_show_tab("runs")
        await until(pa, lambda: state(a, run_dir) == "running", what="a to show the run running")
        await rescan("running")
        pane_a.select_run(run_dir)
        await pa.press("s")
        await pb.press("s")
        await until(pa, lambda: stopped_and_gone(run_dir), timeout=120, what="the run to stop")
        assert checkpoints_since_last_start(run_dir) == 1

        # b asks to delete the stopped run; a resumes it before b answers yes: the delete is refused.
        await rescan("stopped")
        await until(pa, lambda: state(a, run_dir) == "stopped", what="a to show the run stopped")
        await pb.press("d")
        await until(pb, lambda: isinstance(b.screen, ConfirmModal), what="the delete question")
        await pa.press("r")
        await until(pa, lambda: read_status(run_dir).get("state") in ("queued", "running"), what="the resume to start")
        await pb.press("y")
        await until(pb, lambda: isinstance(b.screen, ErrorModal), timeout=30, what="the refused delete")
        assert any(word in b.screen.message for word in BUSY), b.screen.message
        assert (run_dir / "checkpoints" / "pretrain" / "latest").is_dir()
        await pb.press("escape")

        # Stopped from the CLI, b deletes it, and a's table lets it go.
        await until(pa, lambda: read_status(run_dir).get("state") == "running", timeout=120, what="the run to train")
        assert (await cli_async("stop", run_dir.name, "--out-dir", str(runs))).returncode == 0
        await until(pa, lambda: stopped_and_gone(run_dir), timeout=120, what="the run to stop")
        await rescan("stopped")
        await pb.press("d")
        await until(pb, lambda: isinstance(b.screen, ConfirmModal), what="the delete question")
        await pb.press("y")
        await until(pa, lambda: not run_dir.exists() and state(a, run_dir) is None, what="the run gone from a's table")
