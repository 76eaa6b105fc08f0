"""Mirror a run's metrics to SwanLab: an EventLog listener that never gets in training's way.

`preset.tracking.swanlab.mode` picks where the metrics go (`logdir` defaults to `<run dir>/swanlog`):
- disabled: nothing; swanlab is not even imported.
- offline:  `<logdir>/run-<YYYYmmdd_HHMMSS>-<id>/` holding `run-<id>.swanlab` (all records: metrics,
            config, start/finish), `files/config.yaml` (the frozen preset), `files/swanlab-metadata.json`,
            `files/requirements.txt` and `debug/debug.log`. Upload later with
            `swanlab sync <logdir>/run-*` (every session of one run carries the same id, so they merge
            into one cloud experiment).
- local:    the same files plus `logs/<column>/*.log` for the legacy dashboard; view with
            `swanlab watch <logdir>`, which needs `pip install 'swanlab[dashboard]'` (without it swanlab
            logs an ImportError, we emit a warning, and the files are still written).
- cloud:    streams to swanlab.cn (after `swanlab login` or with SWANLAB_API_KEY) and keeps a local copy
            in `<logdir>` as in offline mode. Without credentials or network it only warns.

A resumed run continues the same experiment: the id swanlab assigned is kept in `<run dir>/tracking.json`
and passed back with `resume="allow"`. Offline/local sessions each get their own `run-*` folder with that
same id; cloud mode appends to the one experiment.

swanlab.init runs on a helper thread: that bounds how long an unreachable server can hold up training
(login retries take ~15 s), and swanlab only installs its SIGINT handler on the main thread, so the
pipeline's own Ctrl-C handling (checkpoint, then stop) stays in charge.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import threading
from pathlib import Path
from typing import Any

from engine.atomic import write_json_atomic
from engine.config import Preset
from engine.events import EvalEvent, Event, EventLog, StepEvent, WarningEvent
from engine.runs.state import RunState

TRACKING_FILE = "tracking.json"
INIT_TIMEOUT_S = 20.0  # longer than swanlab's own login retries (~15 s) so their error is what we report
FINISH_TIMEOUT_S = 60.0  # cloud finish waits for pending uploads; a dead network must not hang the exit

# Numeric step fields that are bookkeeping, not curves worth plotting.
_STEP_SKIP = {"v", "t", "kind", "stage", "step", "total_steps", "eta_s"}
_EVAL_FIELDS = ("eval_loss", "heldout_accuracy")
# Our pipeline states -> swanlab finish states.
_FINISH_STATE = {RunState.FINISHED: "success", RunState.STOPPED: "aborted", RunState.FAILED: "crashed"}


def event_metrics(event: Event) -> dict[str, float]:
    """The `<stage>/<name>` scalars a step or eval event contributes (empty for every other kind)."""
    if isinstance(event, StepEvent):
        values = event.model_dump(exclude=_STEP_SKIP)
    elif isinstance(event, EvalEvent):
        values = event.model_dump(include=set(_EVAL_FIELDS))
    else:
        return {}
    stage = event.stage or "train"
    return {
        f"{stage}/{key}": float(value)
        # bool is an int subclass; None is a reading the run did not have, and NaN/inf are not points.
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def _call_with_timeout(fn: Any, timeout: float, on_late: Any = None) -> Any:
    """fn() on a daemon thread; TimeoutError if it takes longer. A result that arrives after we gave up
    goes to on_late (so a late swanlab run gets finished instead of lingering)."""
    box: dict[str, Any] = {}
    lock = threading.Lock()

    def target() -> None:
        try:
            value = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            box["error"] = error
            return
        with lock:
            if box.get("abandoned"):
                if on_late:
                    on_late(value)
            else:
                box["value"] = value

    thread = threading.Thread(target=target, name="swanlab", daemon=True)
    thread.start()
    thread.join(timeout)
    with lock:
        if "value" in box:
            return box["value"]
        if "error" in box:
            raise box["error"]
        box["abandoned"] = True
    raise TimeoutError(f"no answer within {timeout:.0f} s")


class SwanlabTracker:
    """Listener for an EventLog: logs step/eval metrics to one SwanLab experiment; close() ends it."""

    def __init__(self, run: Any, log: EventLog) -> None:
        self._run = run
        self._log = log

    @classmethod
    def create(cls, preset: Preset, run_dir: Path, log: EventLog) -> SwanlabTracker | None:
        """Start (or continue) the run's experiment; None when tracking is off or could not start."""
        cfg = preset.tracking.swanlab
        if cfg.mode == "disabled":
            return None
        run_dir = Path(run_dir)
        saved = _read_saved(run_dir)
        logdir = Path(cfg.logdir).expanduser().resolve() if cfg.logdir else run_dir / "swanlog"
        try:
            import swanlab

            settings = swanlab.Settings(
                interactive=False,  # never ask for a login on stdin: raise instead, and we warn
                terminal=swanlab.Settings.Terminal(proxy_type="none"),  # events.jsonl is our log; leave stdout alone
            )
            kwargs: dict[str, Any] = {
                "project": cfg.project, "name": cfg.experiment or run_dir.name, "log_dir": str(logdir),
                "mode": "online" if cfg.mode == "cloud" else cfg.mode, "config": preset.model_dump(mode="json"),
                "description": f"minimind-studio run {run_dir}", "settings": settings,
            }
            if saved.get("id"):
                kwargs.update(id=saved["id"], resume="allow")
            run = _call_with_timeout(lambda: swanlab.init(**kwargs), INIT_TIMEOUT_S, on_late=_finish_quietly)
        except (Exception, SystemExit) as error:  # noqa: BLE001 - tracking is optional; training goes on
            reason = f"{type(error).__name__}: {error}"
            if cfg.mode == "cloud":
                message = (f"SwanLab cloud login failed: {reason}; training continues without tracking; "
                           f"run `swanlab login` or use mode = offline")
            else:
                message = f"SwanLab ({cfg.mode}) could not start: {reason}; training continues without tracking"
            _warn(log, message)
            return None
        sessions = [*saved.get("sessions", []), str(run.dir)]
        try:
            write_json_atomic(run_dir / TRACKING_FILE, {
                "tool": "swanlab", "id": run.id, "mode": cfg.mode, "project": cfg.project,
                "experiment": kwargs["name"], "logdir": str(logdir), "sessions": sessions,
            })
        except OSError as error:
            _warn(log, f"could not save {TRACKING_FILE} ({error}); a resumed run will start a new SwanLab experiment")
        if cfg.mode == "local" and importlib.util.find_spec("swanboard") is None:
            _warn(log, f"SwanLab local mode: metrics are saved in {logdir}, but `swanlab watch` needs "
                       f"`pip install 'swanlab[dashboard]'` (or use mode = offline and `swanlab sync` later)")
        return cls(run, log)

    @property
    def active(self) -> bool:
        return self._run is not None

    def __call__(self, event: Event) -> None:
        if self._run is None:
            return
        try:
            metrics = event_metrics(event)
            if metrics:
                step = getattr(event, "step", None)
                self._run.log(metrics, step=step if isinstance(step, int) and step >= 0 else None)
        except Exception as error:  # noqa: BLE001 - a tracker failure must never stop training
            run, self._run = self._run, None  # off first: the warning below comes back through this listener
            _finish_quietly(run)
            _warn(self._log, f"SwanLab logging failed ({type(error).__name__}: {error}); "
                             f"tracking is off for the rest of this session")

    def close(self, state: RunState = RunState.FINISHED, error: str | None = None) -> None:
        """Finish the experiment (state: finished | stopped | failed, as in PipelineResult). Idempotent."""
        run, self._run = self._run, None
        if run is None:
            return
        finish_state = _FINISH_STATE.get(state, "success")
        if finish_state == "crashed" and not error:
            error = "run failed"
        try:
            _call_with_timeout(lambda: run.finish(state=finish_state, error=error), FINISH_TIMEOUT_S)
        except Exception as failure:  # noqa: BLE001
            _warn(self._log, f"SwanLab finish failed ({type(failure).__name__}: {failure}); "
                             f"some metrics may not have been saved")


def _read_saved(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / TRACKING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finish_quietly(run: Any) -> None:
    with contextlib.suppress(Exception):  # already giving up on this run
        run.finish(state="aborted")


def _warn(log: EventLog, message: str) -> None:
    with contextlib.suppress(Exception):  # a broken event sink must not turn a warning into a crash
        log.emit(WarningEvent(message=message))
