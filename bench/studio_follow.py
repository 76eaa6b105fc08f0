"""The studio following a long run: memory and redraw cost with one million step events in events.jsonl.

    python -m bench.studio_follow [--events 1000000] [--append 1000 --batches 10] [--quick] [--no-publish]

A run directory is generated in a temporary folder (a frozen minimind-26m preset, a live status.json
owned by this process, and an events.jsonl written line by line in the engine's exact format: the
tokenizer stage, then pretrain step events with CUDA memory fields, an eval and a sample every 1000
steps, a checkpoint every 10000). Then, each in a fresh process, the real StudioApp runs headless at
120x40 with the monitor tab shown:

  baseline  an empty runs folder: the studio's own RSS
  follow    the generated run: time until every event is folded in and the charts are drawn, RSS
            after that, the event loop's longest stall while loading; then `--batches` batches of
            events are appended while it runs, timing each refresh: the worker's poll (read + fold +
            snapshot), the pane's redraw, the charts' render, and append-to-drawn latency.

The studio polls every --poll-s seconds (the app's default is 1 s; the latency includes that wait).
--quick uses 20,000 events. Results are printed and appended to bench/RESULTS.md (--no-publish: print only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.train import ROOT, publish
from engine.hardware.process_memory import peak_rss_mb

SIZE = (120, 40)
PRESET = ROOT / "presets" / "minimind-26m.toml"
TOTAL_MEM_MB = 81559.0  # an 80 GB card


# --------------------------------------------------------------------------------------------
# The run directory


def make_run(runs_dir: Path, n_steps: int) -> Path:
    """A live run as the engine leaves it mid-pretrain; this process plays the run's pid."""
    from engine.config import load_preset
    from engine.runs.run import Run
    from engine.runs.run_dir import create_run

    preset = load_preset(PRESET, [f"pretrain.max_steps={n_steps * 2}", "pretrain.log_interval=1"])
    preset.out_dir = str(runs_dir)
    run_dir = create_run(preset)
    run = Run(run_dir)
    run.claim()  # this process plays the run's pid
    run.start(stage="pretrain", step=n_steps, total_steps=n_steps * 2, loss=2.5, stages_done=["tokenizer"])
    return run_dir


def _line(event: dict) -> str:
    return json.dumps(event, ensure_ascii=False) + "\n"  # what EventLog.emit writes


class EventWriter:
    """Writes events in EventLog's format; step lines come from one f-string (json.dumps per line is ~4x slower)."""

    def __init__(self, path: Path, total_steps: int, t0: float = 1_780_000_000.0, seed: int = 0) -> None:
        self.path, self.total, self.t, self.rng = path, total_steps, t0, random.Random(seed)
        self.step = 0

    def header(self) -> str:
        t = self.t
        return "".join(_line(e) for e in (
            {"v": 1, "t": t, "kind": "stage_start", "stage": "tokenizer", "total_steps": 1, "start_step": 0, "resumed": False},
            {"v": 1, "t": t + 60, "kind": "stage_end", "stage": "tokenizer", "state": "finished", "step": 1, "total_steps": 1,
             "vocab_size": 6400, "chars_per_token": 3.41, "train_seconds": 58.2},
            {"v": 1, "t": t + 61, "kind": "stage_start", "stage": "pretrain", "total_steps": self.total, "start_step": 0,
             "resumed": False, "device": "cuda:0", "dtype": "bfloat16", "dtype_reason": "bf16 supported", "params": 25_830_400,
             "active_params": 25_830_400, "tokens_per_step": 131_072, "init_from": None, "data_path": "/data/pretrain_hq.jsonl",
             "n_docs": 1_413_103, "n_tokens": 1_021_394_115, "blocks": 1_995_000},
        ))

    def steps(self, n: int) -> str:
        rng, out = self.rng, []
        for _ in range(n):
            self.step += 1
            s, total = self.step, self.total
            self.t += 0.25
            loss = 2.2 + 7.0 * math.exp(-s / 20_000) + rng.gauss(0, 0.08)
            lr = 5e-4 * min(1.0, s / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / total))))
            tps = 524_288.0 + rng.gauss(0, 9_000)
            alloc = 6_200.0 + rng.random() * 40
            out.append(
                f'{{"v": 1, "t": {round(self.t, 3)!r}, "kind": "step", "stage": "pretrain", "step": {s}, "total_steps": {total}, '
                f'"loss": {loss!r}, "lr": {lr!r}, "grad_norm": {0.4 + rng.random()!r}, "tokens_per_s": {tps!r}, '
                f'"samples_per_s": {tps / 512!r}, "mfu": {tps * 1.6e8 / 989e12!r}, "eta_s": {(total - s) * 0.25!r}, '
                f'"tokens_seen": {s * 131_072}, "epoch": {s / 1_995_000 * 32!r}, "mem_alloc_mb": {alloc!r}, '
                f'"mem_peak_mb": 11873.5, "mem_reserved_mb": 14336.0, "mem_total_mb": {TOTAL_MEM_MB!r}, '
                f'"gpu_util_pct": {float(rng.randint(90, 100))!r}}}\n')
            if s % 1000 == 0:
                out.append(_line({"v": 1, "t": round(self.t, 3), "kind": "eval", "stage": "pretrain", "step": s,
                                  "eval_loss": loss + 0.05}))
                out.append(_line({"v": 1, "t": round(self.t, 3), "kind": "sample", "stage": "pretrain", "step": s,
                                  "prompt": "Once upon a time", "text": " there was a little robot who liked to count."}))
            if s % 10_000 == 0:
                out.append(_line({"v": 1, "t": round(self.t, 3), "kind": "checkpoint", "stage": "pretrain", "step": s,
                                  "path": f"checkpoints/pretrain/step_{s:06d}", "seconds": 1.9}))
        return "".join(out)

    def write(self, text: str) -> int:
        """Append whole lines with one write, as the engine does; returns the number of lines."""
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
        return text.count("\n")


def check_format(path: Path, n: int = 2000) -> None:
    """The first lines must validate against the engine's schema: a bench on malformed events proves nothing."""
    from engine.events import parse_event

    with open(path, encoding="utf-8") as handle:
        for _, raw in zip(range(n), handle):
            parse_event(json.loads(raw))


# --------------------------------------------------------------------------------------------
# The studio, in a child process


def _rss_mb() -> float:
    import gc

    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss / (1024 * 1024)


class Probe:
    """Timings of the follower's poll, the pane's redraw and the charts' render, gathered by wrapping them."""

    def __init__(self) -> None:
        from studio.run_watch import RunWatch
        from studio.widgets.monitor.metric_plot import MetricPlot
        from studio.widgets.monitor.monitor_pane import MonitorPane

        self.polls: list[tuple[float, float]] = []  # (end time, seconds)
        self.redraws: list[tuple[float, float, int]] = []  # (end time, seconds, events folded in the shown snapshot)
        self.renders: list[tuple[float, float, str]] = []  # (end time, seconds, widget id)
        probe = self

        def timed(cls, name, record):
            original = getattr(cls, name)

            def wrapper(self, *args, **kwargs):
                started = time.perf_counter()
                result = original(self, *args, **kwargs)
                end = time.perf_counter()
                record(self, end, end - started)
                return result

            setattr(cls, name, wrapper)

        timed(RunWatch, "poll", lambda w, end, s: probe.polls.append((end, s)))
        timed(MonitorPane, "redraw", lambda p, end, s: probe.redraws.append((end, s, p.primary.n_events if p.primary else 0)))
        timed(MetricPlot, "render", lambda m, end, s: probe.renders.append((end, s, m.id or "")))

    def drawn_at(self, n_events: int, since: float = 0.0) -> float | None:
        """When the loss chart was first rendered after a redraw (after `since`) showing n_events (None: not yet)."""
        shown = next((end for end, _, n in self.redraws if n >= n_events and end >= since), None)
        if shown is None:
            return None
        return next((end for end, _, wid in self.renders if wid == "loss-plot" and end >= shown), None)


async def _until(pilot, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await pilot.pause(0.01)


async def child(runs_dir: Path, lines: int, append: int, batches: int, poll_s: float, seed: int) -> dict:
    import asyncio

    t0 = time.perf_counter()
    from studio.app import StudioApp
    from studio.widgets.monitor.monitor_pane import MonitorPane

    probe = Probe()
    stalls: list[float] = []

    async def watch_loop() -> None:
        """The event loop's lateness on a 10 ms timer: how long the UI could not react."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            stalls.append(time.perf_counter() - started - 0.01)

    app = StudioApp(runs_dir, offer_tiny=False, poll_s=poll_s)
    result: dict = {}
    async with app.run_test(size=SIZE) as pilot:
        lag = asyncio.create_task(watch_loop())
        while len(app.query("Pane")) < 5:
            await pilot.pause(0.01)
        if lines == 0:  # the empty-studio baseline, monitor shown
            await pilot.press("3")
            await pilot.pause(0.5)
            lag.cancel()
            return {"rss_mb": _rss_mb(), "peak_rss_mb": peak_rss_mb()}
        monitor = app.query_one(MonitorPane)

        async def open_from_runs_tab() -> float:
            """What a user does: Runs tab (2), Enter on the run; returns when Enter was pressed."""
            await pilot.press("2")
            await pilot.pause()
            opened = time.perf_counter()
            await pilot.press("enter")
            return opened

        # The studio opens on the Runs tab; its lazily mounted monitor follows the newest run at once.
        mounted = time.perf_counter()
        await pilot.press("3")
        await _until(pilot, lambda: probe.drawn_at(lines) is not None, 1800, "the whole file drawn")
        stalls_loading, stalls[:] = stalls[:], []
        first = next(end for end, _, wid in probe.renders if wid == "loss-plot" and any(r_end <= end for r_end, _, n in probe.redraws if n))
        result.update(ingest_s=probe.drawn_at(lines) - t0, first_chart_s=first - t0, mounted_s=mounted - t0,
                      max_stall_ms=max(stalls_loading, default=0) * 1000,
                      ingest_polls=len(probe.polls), ingest_redraws=len(probe.redraws),
                      rss_mb=_rss_mb(), peak_rss_mb=peak_rss_mb(),
                      points=sum(len(v[0]) for v in monitor.primary.stage_view("pretrain").series.values()))

        # Appending while the studio follows: each batch is one write, then wait until it is drawn.
        run_dir = monitor.run_dirs[0]
        writer = EventWriter(run_dir / "events.jsonl", monitor.primary.last_step.total_steps, seed=seed + 1)
        writer.step, writer.t = monitor.primary.last_step.step, monitor.primary.last_step.t
        n_polls, n_redraws, n_renders = len(probe.polls), len(probe.redraws), len(probe.renders)
        latencies = []
        expected = lines
        for _ in range(batches):
            expected += writer.write(writer.steps(append // batches))
            written = time.perf_counter()
            await _until(pilot, lambda n=expected, t=written: probe.drawn_at(n, t) is not None, 60, "an appended batch drawn")
            latencies.append(probe.drawn_at(expected, written) - written)
        await pilot.pause(2 * poll_s)  # polls that find nothing new cost time too
        result.update(
            poll_ms=[s * 1000 for _, s in probe.polls[n_polls:]],
            redraw_ms=[s * 1000 for _, s, _ in probe.redraws[n_redraws:]],
            render_ms={wid: [s * 1000 for _, s, w in probe.renders[n_renders:] if w == wid]
                       for wid in ("loss-plot", "lr-plot", "speed-plot")},
            latency_ms=[s * 1000 for s in latencies], rss_after_append_mb=_rss_mb())

        # Opening the same run again from the Runs tab (or adding an overlay) must not reload the file.
        reopened = await open_from_runs_tab()
        await _until(pilot, lambda: probe.drawn_at(expected, reopened) is not None, 1800, "the reopened run drawn")
        lag.cancel()
        result.update(reopen_s=probe.drawn_at(expected, reopened) - reopened,
                      final_events=monitor.primary.n_events, expected_events=expected)
    return result


def run_child(runs_dir: Path, lines: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.studio_follow", "--child", str(runs_dir), str(lines), "--append", str(args.append),
               "--batches", str(args.batches), "--poll-s", str(args.poll_s)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"studio child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def report_body(n_steps: int, lines: int, size: int, gen_s: float, base: dict, follow: dict, args: argparse.Namespace) -> str:
    render = follow["render_ms"]
    rows = [
        ("events.jsonl", f"{n_steps:,} step events ({lines:,} lines, {size / 2**20:,.0f} MiB), written in {gen_s:.1f} s"),
        ("process start -> all tabs mounted (the monitor starts reading)", f"{follow['mounted_s']:.2f} s"),
        ("process start -> first loss chart drawn", f"{follow['first_chart_s']:.2f} s"),
        ("process start -> whole file folded in and charts drawn",
         f"{follow['ingest_s']:.2f} s ({follow['ingest_polls']} polls, {follow['ingest_redraws']} redraws)"),
        ("longest event-loop stall while loading", f"{follow['max_stall_ms']:.0f} ms"),
        ("RSS after loading (empty studio)", f"{follow['rss_mb']:,.0f} MiB ({base['rss_mb']:,.0f} MiB)"),
        ("RSS after appending", f"{follow['rss_after_append_mb']:,.0f} MiB"),
        ("points kept for the pretrain charts (6 series)", f"{follow['points']:,}"),
        ("poll: read + fold + snapshot, median / max", f"{_stats(follow['poll_ms'])} ms"),
        ("pane redraw (UI thread), median / max", f"{_stats(follow['redraw_ms'])} ms"),
        ("chart render loss / lr / tok/s, median",
         " / ".join(f"{statistics.median(v):.1f}" if v else "-" for v in render.values()) + " ms"),
        ("append -> drawn latency, median / max", f"{_stats(follow['latency_ms'])} ms (polling every {args.poll_s} s)"),
        ("the run opened from the Runs tab (Enter) -> drawn", f"{follow['reopen_s']:.2f} s"),
    ]
    head = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; StudioApp headless at {SIZE[0]}x{SIZE[1]}, "
            f"monitor shown; {args.append:,} events appended in {args.batches} batches after loading"
            f"{' (quick run)' if args.quick else ''}.")
    return head + "\n\n| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="step events in the file before the studio opens")
    parser.add_argument("--append", type=int, default=1000, help="step events appended while following")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--poll-s", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20,000 events")
    parser.add_argument("--no-publish", action="store_true", help="print only; do not append to bench/RESULTS.md")
    parser.add_argument("--child", nargs=2, metavar=("RUNS_DIR", "LINES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import asyncio

        print(json.dumps(asyncio.run(child(Path(args.child[0]), int(args.child[1]), args.append, args.batches,
                                           args.poll_s, args.seed))))
        return 0
    if args.quick:
        args.events = 20_000

    with tempfile.TemporaryDirectory(prefix="bench-follow-") as tmp:
        empty, runs = Path(tmp) / "empty", Path(tmp) / "runs"
        empty.mkdir()
        run_dir = make_run(runs, args.events)
        started = time.perf_counter()
        writer = EventWriter(run_dir / "events.jsonl", args.events * 2, seed=args.seed)
        lines = writer.write(writer.header())
        for done in range(0, args.events, 100_000):
            lines += writer.write(writer.steps(min(100_000, args.events - done)))
        gen_s = time.perf_counter() - started
        check_format(run_dir / "events.jsonl")
        size = (run_dir / "events.jsonl").stat().st_size
        print(f"wrote {lines:,} lines ({size / 2**20:,.0f} MiB) in {gen_s:.1f} s", flush=True)
        base = run_child(empty, 0, args)
        print(f"empty studio: RSS {base['rss_mb']:,.0f} MiB", flush=True)
        follow = run_child(runs, lines, args)
        if follow["final_events"] != follow["expected_events"]:
            raise RuntimeError(f"the studio folded {follow['final_events']} events, expected {follow['expected_events']}")
        body = report_body(args.events, lines, size, gen_s, base, follow, args)
    publish("Studio following a long run", body, print_only=args.no_publish)
    return 0


if __name__ == "__main__":
    sys.exit(main())
