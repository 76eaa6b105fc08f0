"""Follow one run directory incrementally and summarise it as an immutable snapshot (no UI here).

A `RunWatch` lives in the monitor's worker thread: each `poll` reads only the bytes appended to
events.jsonl since the last poll (bounded per call, so a run with a million events loads in slices
and the UI shows progress), folds them into bounded series (studio.series), and `snapshot` returns
frozen copies the UI thread can draw without locks. Two watchers on the same directory (a second
studio, a reopened one) fold the same events, so they show the same state: that is re-attaching.

Within one studio a `WatchPool` keeps the watches across the monitor's re-follows (opening the run
again from the Runs tab, adding or dropping an overlay): a run of a million events is read once, not
once per click (~20 s each time on two cores before the pool).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.api import RunState
from engine.api.runs import effective_state, read_status
from engine.events import (
    CacheProgressEvent,
    EvalEvent,
    Event,
    SampleEvent,
    StageEndEvent,
    StageStartEvent,
    StepEvent,
    format_event,
    read_events,
)
from studio.logs_view import tail_lines
from studio.series import Ema, Series

CHUNK_BYTES = 1 << 20  # events read per poll: ~2.5k step events; the parsed dicts of a slice are its peak memory
# While a long file is still loading, report at most this often: each report costs the UI a full redraw
# (~50 ms for the three charts), and redrawing per slice slowed loading by competing for the GIL.
LOADING_REPORT_S = 0.3
EVENT_LINES = 60
LOG_LINES = 60
METRICS = ("loss", "loss_ema", "eval_loss", "lr", "tokens_per_s", "mfu")
Points = tuple[tuple[float, ...], tuple[float, ...]]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class StageView:
    name: str
    state: RunState  # pending | running | finished | stopped | failed
    step: int
    total_steps: int
    eta_s: float | None
    series: dict[str, Points]
    cache: CacheProgressEvent | None = None  # the last cache_progress while the stage's data is tokenized

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


@dataclass(frozen=True)
class RunSnapshot:
    run_dir: Path
    preset: str
    state: RunState  # effective state: a dead live run reads CRASHED
    status: dict[str, Any]
    stage: str | None  # the stage running now (or the last one that ran)
    stages: tuple[StageView, ...]
    last_step: StepEvent | None  # the newest step event
    last_eval: EvalEvent | None  # the newest eval of the current stage (loss and held-out merged)
    setup: StageStartEvent | None  # how the current stage started (device, dtype, ...)
    events: tuple[str, ...]
    log_tail: tuple[str, ...]
    n_events: int
    offset: int

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    def stage_view(self, name: str | None) -> StageView | None:
        return next((s for s in self.stages if s.name == name), None)


@dataclass
class _Stage:
    name: str
    state: RunState = RunState.PENDING
    step: int = 0
    total_steps: int = 0
    eta_s: float | None = None
    ema: Ema = field(default_factory=Ema)
    series: dict[str, Series] = field(default_factory=lambda: {m: Series() for m in METRICS})
    cache: CacheProgressEvent | None = None

    def rewind(self, step: int) -> None:
        """A resumed stage replays steps after its checkpoint: drop the points it will log again."""
        for series in self.series.values():
            series.truncate(step)

    def view(self) -> StageView:
        return StageView(self.name, self.state, self.step, self.total_steps, self.eta_s,
                         {name: s.points() for name, s in self.series.items()}, self.cache)


class RunWatch:
    def __init__(self, run_dir: Path, with_log: bool = True, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.run_dir = Path(run_dir)
        self.with_log = with_log
        self.chunk_bytes = chunk_bytes
        self.offset = 0
        self.n_events = 0
        self.stage_order, self.preset = self._read_preset()
        self.stages: dict[str, _Stage] = {name: _Stage(name) for name in self.stage_order}
        self.current: str | None = None
        self.last_step: StepEvent | None = None
        self.last_eval: EvalEvent | None = None
        self.setup: dict[str, StageStartEvent] = {}  # each stage's start: device, dtype, params
        self.lines: deque[str] = deque(maxlen=EVENT_LINES)
        self.status: dict[str, Any] = {}
        self.state = RunState.UNKNOWN
        self.log_tail: tuple[str, ...] = ()
        self._log_sig: tuple[int, int] | None = None
        self.more_pending = False
        # A pool may hand this watch to a new follower thread while the old one finishes its last poll.
        self.lock = threading.RLock()
        self._dirty = True  # something changed since the last report (a new follower always gets a first one)
        self._reported = float("-inf")

    def _read_preset(self) -> tuple[list[str], str]:
        from engine.config import load_preset
        from engine.errors import PresetError

        try:
            preset = load_preset(self.run_dir / "preset.toml")
        except PresetError:
            return [], self.run_dir.name
        return list(preset.stages), preset.name

    def _stage(self, name: str) -> _Stage:
        if name not in self.stages:
            self.stages[name] = _Stage(name)
            self.stage_order.append(name)
        return self.stages[name]

    def poll(self) -> bool:
        """Read what was appended since the last poll; True when a snapshot should be shown now.

        That is: something changed since the last report (or a new follower took this watch over), and
        either the file is read to its end or the last report is LOADING_REPORT_S old.
        """
        with self.lock:
            self._dirty |= self._poll()
            now = time.monotonic()
            if not self._dirty or (self.more_pending and now - self._reported < LOADING_REPORT_S):
                return False
            self._dirty, self._reported = False, now
            return True

    def poll_and_post(self, post: Callable[[RunSnapshot], Any]) -> bool:
        """poll(), and hand a snapshot to `post` when there is one to show; returns more_pending.

        Both under the watch's lock: two followers sharing a watch then post its snapshots in order, so
        a replaced follower's last message can never overwrite a newer picture.
        """
        with self.lock:
            if self.poll():
                post(self.snapshot())
            return self.more_pending

    def reattach(self, with_log: bool) -> None:
        """A new follower takes this watch: its first poll reports even if nothing changed."""
        with self.lock:
            self.with_log, self._dirty = with_log, True

    def _poll(self) -> bool:
        path = self.run_dir / "events.jsonl"
        events, new_offset = read_events(path, self.offset, self.chunk_bytes)
        # More complete lines may be waiting when this slice was not empty and the file goes on (a torn
        # last line alone reads as an empty slice, so a half-written line never causes a busy loop).
        self.more_pending = new_offset > self.offset and _size(path) > new_offset
        self.offset = new_offset
        for event in events:
            self.apply(event)
        status = read_status(self.run_dir)
        state = effective_state(status)
        changed = bool(events) or status != self.status or state != self.state
        self.status, self.state = status, state
        if self.with_log:
            changed |= self._read_log()
        return changed

    def _read_log(self) -> bool:
        path = self.run_dir / "train.log"
        try:
            stat = os.stat(path)
            signature = (stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            signature = None
        if signature == self._log_sig:
            return False
        self._log_sig = signature
        self.log_tail = tuple(tail_lines(path, LOG_LINES))
        return True

    def apply(self, event: Event) -> None:
        """Fold one event into the state (pure bookkeeping; tests feed events directly)."""
        self.n_events += 1
        stage = self._stage(event.stage) if event.stage else None
        if isinstance(event, StepEvent) and stage is not None:
            self._apply_step(stage, event)
            return
        if isinstance(event, CacheProgressEvent) and stage is not None:
            # Tokenizing the stage's data comes before its stage_start: show it, then forget it at the start.
            stage.cache = event if event.bytes_done < event.bytes_total else None
            self.current = stage.name
            return
        if isinstance(event, StageStartEvent) and stage is not None:
            stage.cache = None
            if stage.step > event.start_step:
                stage.rewind(event.start_step)
            stage.state, stage.step, stage.total_steps = RunState.RUNNING, event.start_step, event.total_steps
            self.current = stage.name
            self.setup[stage.name] = event
        elif isinstance(event, StageEndEvent) and stage is not None:
            stage.state, stage.step = RunState.parse(event.state), event.step
            stage.total_steps = event.total_steps
            stage.eta_s = 0.0 if stage.state == RunState.FINISHED else stage.eta_s
        elif isinstance(event, EvalEvent) and stage is not None:
            stage.series["eval_loss"].add(event.step, event.eval_loss)
            # Merge: a held-out accuracy event must not hide the eval loss reported just before it.
            last = self.last_eval
            if last is not None and last.stage == event.stage:
                event = last.model_copy(update=event.model_dump(exclude_none=True))
            self.last_eval = event
        line = self._line(event)
        if line:
            self.lines.append(line)

    def _apply_step(self, stage: _Stage, event: StepEvent) -> None:
        if self.current != stage.name:
            self.current = stage.name
        stage.state = RunState.RUNNING if stage.state == RunState.PENDING else stage.state
        stage.step, stage.total_steps = event.step, event.total_steps
        stage.eta_s = event.eta_s
        stage.series["loss"].add(event.step, event.loss)
        stage.series["loss_ema"].add(event.step, stage.ema.update(event.loss))
        for metric, value in (("lr", event.lr), ("tokens_per_s", event.tokens_per_s), ("mfu", event.mfu)):
            stage.series[metric].add(event.step, value)
        self.last_step = event

    @staticmethod
    def _line(event: Event) -> str | None:
        if isinstance(event, SampleEvent):
            clock = time.strftime("%H:%M:%S", time.localtime(event.t))
            text = f"{event.prompt!r} → {event.text!r}"
            return f"{clock} {event.stage} sample at step {event.step}: {text[:160]}"
        return format_event(event)

    def snapshot(self) -> RunSnapshot:
        with self.lock:  # a follower thread may be folding events into the same watch
            return self._snapshot()

    def _snapshot(self) -> RunSnapshot:
        return RunSnapshot(
            run_dir=self.run_dir, preset=self.status.get("preset") or self.preset, state=self.state,
            status=dict(self.status), stage=self.current or self.status.get("stage"),
            stages=tuple(self.stages[name].view() for name in self.stage_order),
            last_step=self.last_step, last_eval=self.last_eval,
            setup=self.setup.get(self.current or ""), events=tuple(self.lines),
            log_tail=self.log_tail, n_events=self.n_events, offset=self.offset,
        )


class WatchPool:
    """The watches of one studio, by run directory, reused across re-follows; the `keep` most recent stay.

    A watch holds bounded series (a few MB at most for a three-stage run), so keeping a handful costs
    little next to re-reading a long events file.
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._watches: OrderedDict[Path, RunWatch] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: Path, with_log: bool = True) -> RunWatch:
        run_dir = Path(run_dir)
        with self._lock:
            watch = self._watches.pop(run_dir, None)
            if watch is None:
                watch = RunWatch(run_dir, with_log=with_log)
            else:
                watch.reattach(with_log)
            self._watches[run_dir] = watch  # most recently used last
            while len(self._watches) > self.keep:
                self._watches.popitem(last=False)
            return watch

    def __len__(self) -> int:
        return len(self._watches)
