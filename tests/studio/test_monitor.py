"""The monitor follows a run directory live, tolerates torn lines, and re-attaches from disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

from textual.message import Message

from engine.events import StepEvent
from studio.app import StudioApp
from studio.messages import OpenRuns, RunUpdated
from studio.run_watch import RunWatch
from studio.widgets.monitor.memory_panel import memory_renderable
from studio.widgets.monitor.metric_plot import MetricPlot
from studio.widgets.monitor.monitor_pane import MonitorPane
from tests.support.fake_runs import T0, event_line, make_run, step_event, step_fields
from tests.support.wait import ready, spy_event_reads, until

STAGE_START = {"v": 1, "t": T0, "kind": "stage_start", "stage": "pretrain", "total_steps": 100, "start_step": 0,
               "resumed": False, "device": "cpu", "dtype": "float32"}


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


async def test_monitor_follows_a_growing_events_file_with_a_torn_last_line(runs_dir: Path, monkeypatch) -> None:
    """Guards against a monitor that freezes (or shows garbage) when events.jsonl grows while the app
    runs, that chokes on a line the run is half-way through writing, or that re-reads the whole
    file on every poll; and (second app) against state that lives only in the studio's memory."""
    run_dir = make_run(runs_dir, "20250101-000000-tiny", state="running", pid=os.getpid(), stage="pretrain",
                       events=[STAGE_START] + [step_event("pretrain", s, 100, 5.0 - s / 10) for s in (1, 2, 3)],
                       log="line one\nline two\n")
    offsets = spy_event_reads(monkeypatch)  # one read per poll
    posted: list[Message] = []
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(100, 32), message_hook=posted.append) as pilot:
        await ready(pilot)
        await pilot.press("3")
        monitor = app.query_one(MonitorPane)
        await until(pilot, lambda: monitor.primary is not None and getattr(monitor.primary.last_step, "step", None) == 3, what="step 3")
        setup = monitor.primary.setup
        assert setup is not None and (setup.device, setup.dtype) == ("cpu", "float32")
        assert "line two" in monitor.primary.log_tail

        events = run_dir / "events.jsonl"
        torn = event_line(step_event("pretrain", 6, 100, 4.4))
        append(events, event_line(step_event("pretrain", 4, 100, 4.6)) + event_line(step_event("pretrain", 5, 100, 4.5)))
        append(events, torn[:25])  # the run is in the middle of writing step 6
        await until(pilot, lambda: getattr(monitor.primary.last_step, "step", None) == 5, what="step 5")
        polled = len(offsets)
        await until(pilot, lambda: len(offsets) >= polled + 3, what="three more polls with the torn line present")
        await pilot.pause()  # and what they posted
        snap = monitor.primary
        assert snap.n_events == 6 and snap.last_step.step == 5  # the torn line is neither lost nor half-parsed
        assert snap.offset == events.stat().st_size - 25

        append(events, torn[25:] + json.dumps({"v": 1, "t": T0 + 7, "kind": "eval", "stage": "pretrain", "step": 6,
                                                "eval_loss": 4.2}) + "\n")
        await until(pilot, lambda: getattr(monitor.primary.last_step, "step", None) == 6 and monitor.primary.last_eval, what="step 6")
        snap = monitor.primary
        xs, ys = snap.stage_view("pretrain").series["loss"]
        assert xs == (1, 2, 3, 4, 5, 6) and ys[-1] == 4.4
        assert snap.stage_view("pretrain").series["eval_loss"] == ((6,), (4.2,))
        assert snap.offset == events.stat().st_size
        plot = app.query_one("#loss-plot", MetricPlot)
        assert [line.label for line in plot.lines] == ["train", "eval"] and plot.lines[0].ys[-1] == 4.4
        assert "4.4000" in str(app.query_one("#monitor-metrics").render())
        # Incremental: after the first read every poll starts where the last one ended.
        assert offsets[0] == 0 and offsets == sorted(offsets) and offsets.count(0) == 1
        updates = [m for m in posted if isinstance(m, RunUpdated)]
        assert len(updates) >= 3 and all(u.snapshot.run_dir == run_dir for u in updates)
        first = snap

    # Re-attach: a new studio on the same directory rebuilds the same state from the run directory.
    again = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with again.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        await pilot.press("3")
        monitor = again.query_one(MonitorPane)
        await until(pilot, lambda: monitor.primary is not None and monitor.primary.n_events == first.n_events, what="re-attach")
        snap = monitor.primary
        assert snap.last_step == first.last_step and snap.last_eval == first.last_eval
        assert snap.stages == first.stages and snap.state == first.state == "running"


async def test_overlay_and_toggles_change_the_loss_plot(runs_dir: Path) -> None:
    """Guards against comparison runs or the log/EMA toggles silently not reaching the chart."""
    a = make_run(runs_dir, "20250101-000000-a", events=[step_event("pretrain", s, 10, 3.0 - s / 10) for s in range(1, 6)])
    b = make_run(runs_dir, "20250101-000001-b", events=[step_event("pretrain", s, 10, 2.0 - s / 10) for s in range(1, 4)])
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        app.post_message(OpenRuns([a, b]))
        monitor = app.query_one(MonitorPane)
        plot = app.query_one("#loss-plot", MetricPlot)
        await until(pilot, lambda: len(monitor.snapshots) == 2 and len(plot.lines) == 3, what="overlay")
        assert app.query_one("#tabs").active == "monitor"
        assert plot.lines[2].label.endswith("b") and plot.lines[2].xs == (1, 2, 3)
        await pilot.press("l", "e")
        assert plot.log_y and plot.lines[0].label == "train (EMA)"
        await pilot.press("x")  # drop the overlay
        await until(pilot, lambda: len(plot.lines) == 2, what="overlay dropped")


def test_watch_reads_a_long_file_in_slices_and_keeps_series_bounded(tmp_path: Path) -> None:
    """Guards against a long run (hundreds of thousands of steps) loading in one huge read and drawing
    every point: reads are bounded per poll and each series stays within its cap."""
    run_dir = make_run(tmp_path, "20250101-000000-long")
    n = 30_000
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as handle:
        for step in range(1, n + 1):
            handle.write(event_line(step_event("pretrain", step, n, 10.0 / step)))
    watch = RunWatch(run_dir, chunk_bytes=1 << 20)
    polls = 0
    while True:
        watch.poll()
        polls += 1
        if not watch.more_pending:
            break
    assert polls > 3  # bounded slices, not one read
    snap = watch.snapshot()
    assert snap.n_events == n and snap.last_step.step == n
    xs, ys = snap.stage_view("pretrain").series["loss"]
    assert 1000 <= len(xs) <= 2000 and xs[0] == 1
    assert ys[0] > ys[-1]  # the bucket means keep the curve's shape


def test_memory_panel_shows_gpu_gauges_or_rss() -> None:
    """Guards against the memory panel showing nothing on GPU runs (where it matters most)."""
    from rich.console import Console

    console = Console(width=60, record=True)
    gpu = StepEvent(**step_fields("pretrain", 5, 10, 2.0, rss_mb=None, mem_alloc_mb=30_000, mem_peak_mb=60_000,
                                  mem_reserved_mb=70_000, mem_total_mb=81_920, gpu_util_pct=97))
    console.print(memory_renderable(gpu))
    text = console.export_text()
    assert "peak" in text and "58.6 GiB/80.0 GiB" in text and "97%" in text
    console.print(memory_renderable(StepEvent(**step_fields("pretrain", 5, 10, 2.0, rss_mb=900))))
    assert "no step events yet" in str(memory_renderable(None))
    assert "RSS 900 MiB" in console.export_text()


def test_memory_panel_shows_one_gauge_per_gpu_of_a_several_process_run() -> None:
    """Guards against a torchrun job's panel showing rank 0 only: a GPU running out of memory on rank 3 must
    be visible (red) in its own row; CPU processes show one RSS line each."""
    from rich.console import Console

    from engine.events import RankMemory

    gpus = [RankMemory(rank=r, mem_alloc_mb=20_000, mem_peak_mb=78_000 if r == 3 else 40_000, mem_total_mb=81_920,
                       gpu_util_pct=90) for r in range(4)]
    console = Console(width=70, record=True)
    console.print(memory_renderable(StepEvent(**step_fields("pretrain", 5, 10, 2.0, rss_mb=None, world_size=4,
                                                            ranks=gpus, mem_total_mb=81_920))))
    text = console.export_text()
    assert all(f"gpu {r}" in text for r in range(4)) and "76.2 GiB/80.0 GiB" in text and text.count("39.1 GiB") == 3
    cpus = [RankMemory(rank=r, rss_mb=500 + r) for r in range(2)]
    console.print(memory_renderable(StepEvent(**step_fields("pretrain", 5, 10, 2.0, rss_mb=500, world_size=2, ranks=cpus))))
    text = console.export_text()
    assert "rank 1" in text and "501 MiB" in text


def test_the_monitor_shows_a_token_cache_build_before_the_first_step(tmp_path: Path) -> None:
    """Guards the minutes a 10 GB file spends tokenizing: the stage row must show the data build (MB done of
    the file, ETA) instead of an idle 0/0 bar, and give way to the step bar at stage_start."""
    from rich.console import Console

    from studio.widgets.monitor.stage_progress import StageProgress

    run_dir = make_run(tmp_path, "20250101-000000-data")
    progress = {"v": 1, "t": T0, "kind": "cache_progress", "stage": "pretrain", "bytes_done": 120_000_000,
                "bytes_total": 300_000_000, "mb_per_s": 6.0, "eta_s": 30.0}
    append(run_dir / "events.jsonl", event_line(progress))
    watch = RunWatch(run_dir)
    watch.poll()
    view = watch.snapshot().stage_view("pretrain")
    assert view.state == "pending" and view.cache.bytes_done == 120_000_000

    def shown(snapshot) -> str:
        widget = StageProgress()
        rendered: list = []
        widget.update = rendered.append  # type: ignore[method-assign]
        widget.show(snapshot)
        console = Console(width=100, record=True)
        console.print(rendered[0])
        return console.export_text()

    text = shown(watch.snapshot())
    assert "120/300 MB" in text and "data 0m30s" in text
    append(run_dir / "events.jsonl", event_line(STAGE_START))
    watch.poll()
    assert watch.snapshot().stage_view("pretrain").cache is None
    assert "MB" not in shown(watch.snapshot())
