"""The Monitor tab: one run followed live, other runs optionally overlaid on its loss curve.

A thread worker owns a `RunWatch` per run and polls the run directories (only appended bytes are
read); every change is posted as a `RunUpdated` snapshot, and a burst of them collapses into the
newest. The pane only draws snapshots, so quitting and reopening (or a second studio) shows the
same picture: everything comes from the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static
from textual.worker import get_current_worker

from engine.api import RunState
from engine.events import mfu_text
from studio.display import num, state_colour, state_text, text_or_missing
from studio.messages import RunUpdated
from studio.run_watch import RunSnapshot, WatchPool
from studio.screens.pick_runs_modal import PickRunsModal
from studio.widgets.monitor.memory_panel import MemoryPanel
from studio.widgets.monitor.metric_plot import Line, MetricPlot
from studio.widgets.monitor.stage_progress import StageProgress
from studio.widgets.pane import Pane


class MonitorPane(Pane):
    can_focus = True  # the pane itself takes the focus, so its keys work and show in the footer
    BINDINGS = [
        Binding("l", "toggle_log", "Log scale"),
        Binding("e", "toggle_ema", "Smoothing"),
        Binding("g", "cycle_stage", "Stage"),
        Binding("o", "pick_overlays", "Overlay runs"),
        Binding("x", "clear_overlays", "Drop overlays"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_dirs: list[Path] = []
        self.snapshots: dict[Path, RunSnapshot] = {}
        self.log_y = False
        self.smooth = False
        self.stage_choice: str | None = None  # None: follow the stage that is running
        self.updates = 0  # snapshots drawn (tests and the header use it)
        self.run_watches = WatchPool()  # kept across follow() calls: reopening a long run must not re-read it

    def compose(self) -> ComposeResult:
        yield Static("no run selected: pick one in Runs (2) or launch a preset (1)", id="monitor-head")
        yield StageProgress(id="monitor-progress")
        with Horizontal(id="monitor-plots"):
            yield MetricPlot("loss", id="loss-plot")
            with Vertical(id="monitor-side-plots"):
                yield MetricPlot("learning rate", id="lr-plot")
                yield MetricPlot("tokens/s", id="speed-plot")
        with Horizontal(id="monitor-stats"):
            yield Static("", id="monitor-metrics")
            yield MemoryPanel(id="monitor-memory")
        with Horizontal(id="monitor-logs"):
            yield Static("", id="monitor-events", markup=False)
            yield Static("", id="monitor-log", markup=False)

    def on_mount(self) -> None:
        followed = self.studio_app.followed
        if followed:
            self.follow(followed)
        else:
            self._follow_newest()

    def _follow_newest(self) -> None:
        from engine.api.runs import list_runs

        runs = list_runs(self.studio_app.runs_dir)
        if runs:
            self.follow([runs[-1]])

    # ---- following

    def follow(self, run_dirs: list[Path]) -> None:
        """Show run_dirs[0], overlay the others; restarts the follower worker."""
        self.run_dirs = [Path(d) for d in run_dirs]
        self.snapshots = {}
        self.stage_choice = None
        self.query_one("#monitor-head", Static).update(f"opening {self.run_dirs[0].name}…" if self.run_dirs else "")
        self._follow(list(self.run_dirs), self.studio_app.poll_s)

    @work(thread=True, exclusive=True, exit_on_error=False, group="monitor-follow", name="following the run")
    def _follow(self, run_dirs: list[Path], poll_s: float) -> None:
        worker = get_current_worker()
        watches = [self.run_watches.get(run_dir, with_log=index == 0) for index, run_dir in enumerate(run_dirs)]
        while not worker.is_cancelled:
            more = False
            for watch in watches:
                more |= watch.poll_and_post(lambda snapshot: self.post_message(RunUpdated(snapshot)))
            if more:
                continue  # a long file is still loading: read the next slice at once
            deadline = time.monotonic() + poll_s
            while time.monotonic() < deadline and not worker.is_cancelled:
                time.sleep(0.05)

    def on_run_updated(self, message: RunUpdated) -> None:
        snapshot = message.snapshot
        if snapshot.run_dir not in self.run_dirs:
            return  # a late message from a follower that was replaced
        self.snapshots[snapshot.run_dir] = snapshot
        self.updates += 1
        self.redraw(full=snapshot.run_dir == self.run_dirs[0])

    @property
    def primary(self) -> RunSnapshot | None:
        return self.snapshots.get(self.run_dirs[0]) if self.run_dirs else None

    @property
    def shown_stage(self) -> str | None:
        snap = self.primary
        if snap is None:
            return None
        if self.stage_choice:
            return self.stage_choice
        # The running stage; for the tokenizer (no curve) the next stage with data, if any.
        with_data = [s.name for s in snap.stages if s.series["loss"][0]]
        if snap.stage in with_data or not with_data:
            return snap.stage
        return with_data[-1]

    # ---- drawing

    def redraw(self, full: bool = True) -> None:
        snap = self.primary
        self._draw_loss()
        if snap is None or not full:
            return
        stage = snap.stage_view(self.shown_stage)
        self.query_one("#monitor-head", Static).update(self._head(snap))
        self.query_one(StageProgress).show(snap)
        series = stage.series if stage else {}
        self.query_one("#lr-plot", MetricPlot).show([Line("lr", *series["lr"])] if series else [])
        speed = [Line("tok/s", *series["tokens_per_s"])] if series else []
        self.query_one("#speed-plot", MetricPlot).show(speed)
        self.query_one("#monitor-metrics", Static).update(self._metrics(snap))
        self.query_one(MemoryPanel).show(snap.last_step)
        self._tail("#monitor-events", snap.events, "(no events yet)")
        self._tail("#monitor-log", snap.log_tail, "(train.log is empty)")

    def _tail(self, selector: str, lines: tuple[str, ...], empty: str) -> None:
        """The newest lines that fit, one row each (long lines are cut, not wrapped)."""
        widget = self.query_one(selector, Static)
        rows = widget.size.height or 12
        text = Text("\n".join(lines[-rows:]) or empty, no_wrap=True, overflow="ellipsis")
        widget.update(text)

    def _draw_loss(self) -> None:
        snap = self.primary
        plot = self.query_one("#loss-plot", MetricPlot)
        if snap is None:
            plot.show([])
            return
        stage_name = self.shown_stage
        key = "loss_ema" if self.smooth else "loss"
        lines: list[Line] = []
        stage = snap.stage_view(stage_name)
        if stage:
            lines.append(Line("train (EMA)" if self.smooth else "train", *stage.series[key]))
            lines.append(Line("eval", *stage.series["eval_loss"], marker="dot"))
        for run_dir in self.run_dirs[1:]:
            other = self.snapshots.get(run_dir)
            view = other.stage_view(stage_name) if other else None
            if view:
                lines.append(Line(run_dir.name[-24:], *view.series[key]))
        flags = " · ".join(f for f, on in (("log", self.log_y), ("EMA", self.smooth)) if on)
        plot.show(lines, log_y=self.log_y, title=f"{stage_name or ''} loss{f'  [{flags}]' if flags else ''}")

    def _head(self, snap: RunSnapshot) -> Text:
        head = Text()
        head.append(snap.run_id, style="bold")
        head.append("  ")
        head.append_text(state_text(snap.state))
        setup = " ".join(v for v in (snap.setup.device, snap.setup.dtype) if v) if snap.setup else ""
        head.append(f"  stage {text_or_missing(snap.stage)}" + (f"  {setup}" if setup else ""))
        if len(self.run_dirs) > 1:
            head.append(f"  +{len(self.run_dirs) - 1} overlaid", style="cyan")
        if snap.state in (RunState.FAILED, RunState.CRASHED, RunState.STOPPED) and snap.status.get("exit_reason"):
            head.append(f"  {snap.status['exit_reason']}", style=state_colour(snap.state))
        return head

    def _metrics(self, snap: RunSnapshot) -> Text:
        s, e = snap.last_step, snap.last_eval
        rows = [
            ("loss", num(s and s.loss, ".4f")), ("eval", num(e and e.eval_loss, ".4f")),
            ("lr", num(s and s.lr, ".2e")), ("grad", num(s and s.grad_norm, ".3f")),
            ("tok/s", num(s and s.tokens_per_s, ",.0f")), ("mfu", mfu_text(s)),
            ("tokens", num(s and s.tokens_seen, ",")), ("epoch", num(s and s.epoch, ".2f")),
        ]
        if e is not None and e.heldout_accuracy is not None:
            rows.append(("held-out", f"{e.heldout_accuracy:.1%} ({e.heldout_correct}/{e.heldout_total})"))
        if s is not None and s.gpu_util_pct is not None:
            rows.append(("gpu", f"{s.gpu_util_pct:.0f}%"))
        text = Text()
        for index, (label, value) in enumerate(rows):
            text.append(f"{label} ", style="dim")
            text.append(value, style="bold")
            text.append("\n" if index % 2 else "   ")
        return text

    def on_resize(self) -> None:
        if self.primary is not None:
            self.call_after_refresh(self.redraw)  # the tails depend on the panels' new heights

    # ---- actions

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self._draw_loss()

    def action_toggle_ema(self) -> None:
        self.smooth = not self.smooth
        self._draw_loss()

    def action_cycle_stage(self) -> None:
        snap = self.primary
        if snap is None or not snap.stages:
            return
        names = [s.name for s in snap.stages if s.name != "tokenizer"] or [s.name for s in snap.stages]
        current = self.shown_stage
        self.stage_choice = names[(names.index(current) + 1) % len(names)] if current in names else names[0]
        self.redraw()

    def focus_default(self) -> None:
        if not self.run_dirs:
            self._follow_newest()  # a run may have been started from the CLI since the studio opened
        super().focus_default()

    def action_pick_overlays(self) -> None:
        from engine.api.runs import list_runs

        if not self.run_dirs:
            return
        primary = self.run_dirs[0]
        choices = [(run_dir.name, run_dir) for run_dir in reversed(list_runs(self.studio_app.runs_dir)) if run_dir != primary]
        if not choices:
            self.notify("no other runs to compare with", severity="warning")
            return

        def apply(chosen: list[Path] | None) -> None:
            if chosen is not None:
                self.follow([primary, *chosen])

        self.app.push_screen(PickRunsModal(choices, self.run_dirs[1:]), apply)

    def action_clear_overlays(self) -> None:
        if len(self.run_dirs) > 1:
            self.follow(self.run_dirs[:1])
