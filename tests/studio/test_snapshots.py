"""A few SVG snapshots at fixed sizes (80x24, 120x40) of fixed fake run directories.

State and messages are asserted in the other tests; these catch layout regressions (a panel pushed
off an 80x24 screen, a plot losing its axes). Everything shown is pinned: the clock, the time zone,
the run ids, and the working directory, so paths show as `runs/`. Update with --snapshot-update.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

pytest.importorskip("pytest_textual_snapshot")

from textual.widgets import Input  # noqa: E402

from studio.app import StudioApp  # noqa: E402
from tests.support.fake_runs import DEAD_PID, T0, make_run, step_event  # noqa: E402
from tests.support.wait import ready, until  # noqa: E402


def fake_runs(root: Path) -> Path:
    runs = root / "runs"
    runs.mkdir()
    events = [{"v": 1, "t": T0, "kind": "stage_start", "stage": "tokenizer", "total_steps": 1, "start_step": 0, "resumed": False},
              {"v": 1, "t": T0 + 1, "kind": "stage_end", "stage": "tokenizer", "state": "finished", "step": 1, "total_steps": 1},
              {"v": 1, "t": T0 + 2, "kind": "stage_start", "stage": "pretrain", "total_steps": 400, "start_step": 0,
               "resumed": False, "device": "cuda:0", "dtype": "bfloat16"}]
    for step in range(1, 301):
        loss = 8 * math.exp(-step / 60) + 2 + 0.3 * math.sin(step)
        events.append(step_event("pretrain", step, 400, loss, rss_mb=None, mem_alloc_mb=20_000.0, mem_peak_mb=52_000.0,
                                 mem_reserved_mb=60_000.0, mem_total_mb=81_920.0, gpu_util_pct=93.0))
        if step % 100 == 0:
            events.append({"v": 1, "t": T0 + step, "kind": "eval", "stage": "pretrain", "step": step,
                           "eval_loss": 8 * math.exp(-step / 60) + 2.2})
    make_run(runs, "20250101-000000-tiny", state="finished", stage="sft", step=120, total=120, loss=1.4821)
    make_run(runs, "20250102-000000-big", state="running", pid=DEAD_PID, stage="pretrain", step=300, total=400,
             loss=2.3012, events=events, log="".join(f"pretrain step {s}/400 loss 2.{s:03d}\n" for s in range(10, 310, 10)))
    make_run(runs, "20250103-000000-live", state="running", pid=os.getpid(), stage="tokenizer", step=0, total=1)
    return runs


@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StudioApp:
    monkeypatch.chdir(tmp_path)
    fake_runs(tmp_path)
    return StudioApp("runs", offer_tiny=False, poll_s=0.05, clock=lambda: T0 + 600)


async def settle(pilot) -> None:
    await ready(pilot)
    for widget in pilot.app.query(Input):
        widget.cursor_blink = False  # a blinking cursor makes snapshots flaky
    await pilot.pause()


def snapshot_at(tab: str, follow: str | None = None):
    async def run_before(pilot) -> None:
        await settle(pilot)
        if follow:
            from studio.messages import OpenRuns
            from studio.widgets.monitor.monitor_pane import MonitorPane

            run_dir = Path("runs", follow).resolve()
            monitor = pilot.app.query_one(MonitorPane)
            pilot.app.post_message(OpenRuns([run_dir]))
            await until(pilot, lambda: monitor.primary is not None and monitor.primary.run_dir == run_dir
                        and getattr(monitor.primary.last_step, "step", None) == 300, what=f"the monitor to load {follow}")
        pilot.app.action_show_tab(tab)
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_runs_tab(snap_compare, studio: StudioApp, size: tuple[int, int]) -> None:
    """Runs table: crashed / finished / running states and columns fit at both sizes."""
    assert snap_compare(studio, terminal_size=size, run_before=snapshot_at("runs"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_monitor_tab(snap_compare, studio: StudioApp, size: tuple[int, int]) -> None:
    """Monitor of a GPU run: stage bars, loss with eval, side plots (wide only), memory gauges, tails."""
    assert snap_compare(studio, terminal_size=size, run_before=snapshot_at("monitor", "20250102-000000-big"))


def test_presets_tab_with_an_invalid_edit(snap_compare, studio: StudioApp) -> None:
    """Preset editor at 80x24 showing a field marked invalid and the CLI's message."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        pilot.app.action_show_tab("presets")
        await pilot.pause()
        editor = pilot.app.query_one("#preset-editor")
        await editor.set_field("seed", "forty-two")
        await until(pilot, lambda: editor.rows["seed"].has_class("invalid"), what="the field marked invalid")
        await pilot.pause()

    assert snap_compare(studio, terminal_size=(80, 24), run_before=run_before)
