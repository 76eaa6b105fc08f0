"""A long run is read once per studio: re-following reuses the watch, and loading reports are throttled."""

from __future__ import annotations

import threading
from pathlib import Path

from studio import run_watch
from studio.app import StudioApp
from studio.messages import OpenRuns
from studio.run_watch import RunSnapshot, RunWatch, WatchPool
from studio.widgets.monitor.monitor_pane import MonitorPane
from tests.support.fake_runs import event_line, make_run, step_event
from tests.support.wait import ready, spy_event_reads, until


def long_run(runs_dir: Path, n: int, run_id: str = "20250101-000000-long") -> Path:
    run_dir = make_run(runs_dir, run_id)
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(event_line(step_event("pretrain", s, n, 10.0 / s)) for s in range(1, n + 1))
    return run_dir


def load(watch: RunWatch) -> int:
    """Poll until the file is read; returns how many polls asked for a snapshot."""
    reports = int(watch.poll())
    while watch.more_pending:
        reports += watch.poll()
    return reports


def test_pool_reuses_a_watch_and_reports_once_to_its_new_follower(tmp_path: Path, monkeypatch) -> None:
    """Guards against re-reading a whole events file each time the monitor re-follows a run (opening it
    again from the Runs tab, adding or dropping an overlay: ~20 s for a million events), and against a
    reused watch of an unchanged run never reporting, which left the pane on "opening…" forever."""
    offsets = spy_event_reads(monkeypatch)
    run_dir = long_run(tmp_path, 2000)
    pool = WatchPool(keep=2)
    watch = pool.get(run_dir, with_log=True)
    load(watch)
    assert watch.n_events == 2000 and offsets.count(0) == 1
    assert not watch.poll()  # nothing new, already reported

    again = pool.get(run_dir, with_log=False)
    assert again is watch and not again.with_log
    assert again.poll()  # the new follower gets a first snapshot though nothing changed
    assert not again.poll()
    assert offsets.count(0) == 1 and again.n_events == 2000  # continued from its offset, folded nothing twice

    others = [long_run(tmp_path, 3, f"20250101-00000{i}-other") for i in (1, 2)]
    for other in others:
        pool.get(other)
    assert len(pool) == 2 and pool.get(run_dir) is not watch  # the least recently used one was dropped


def test_loading_reports_are_throttled_but_the_end_is_always_reported(tmp_path: Path, monkeypatch) -> None:
    """Guards against a redraw per slice while a long file loads (each costs the UI ~50 ms of chart
    rendering and slowed loading), and against the throttle swallowing the final, complete picture."""
    monkeypatch.setattr(run_watch, "LOADING_REPORT_S", 3600.0)
    run_dir = long_run(tmp_path, 3000)
    watch = RunWatch(run_dir, chunk_bytes=64 << 10)
    polls: list[bool] = [watch.poll()]
    while watch.more_pending:
        polls.append(watch.poll())
    assert len(polls) > 5 and polls[0] and polls[-1] and sum(polls) == 2  # the first slice, then the end
    assert watch.snapshot().n_events == 3000


def test_two_followers_sharing_a_watch_fold_each_event_once_and_post_in_order(tmp_path: Path) -> None:
    """Guards against the replaced follower thread (still finishing its poll) and the new one folding
    the same slice twice or corrupting the series, and against an older snapshot posted last."""
    run_dir = long_run(tmp_path, 4000)
    watch = RunWatch(run_dir, chunk_bytes=16 << 10)
    posted: list[RunSnapshot] = []
    start = threading.Barrier(2)

    def follow() -> None:
        start.wait()
        while watch.poll_and_post(posted.append):
            pass

    threads = [threading.Thread(target=follow) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    snap = watch.snapshot()
    assert snap.n_events == 4000 and snap.last_step.step == 4000
    assert sum(watch.stages["pretrain"].series["loss"].counts) == 4000
    assert [s.n_events for s in posted] == sorted(s.n_events for s in posted) and posted[-1].n_events == 4000


async def test_reopening_the_followed_run_does_not_read_it_again(runs_dir: Path, monkeypatch) -> None:
    """Guards against the monitor dropping what it has read when the same run is opened again from the
    Runs tab (OpenRuns), which re-read the whole file and blanked the charts meanwhile."""
    offsets = spy_event_reads(monkeypatch)
    run_dir = long_run(runs_dir, 500)
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        monitor = app.query_one(MonitorPane)
        await until(pilot, lambda: monitor.primary is not None and monitor.primary.n_events == 500, what="loaded")
        drawn = monitor.updates
        app.post_message(OpenRuns([run_dir]))
        await until(pilot, lambda: monitor.updates > drawn and monitor.primary is not None, what="reopened")
        assert monitor.primary.n_events == 500 and offsets.count(0) == 1
        assert app.query_one("#loss-plot").lines[0].ys  # the chart is drawn again at once
