"""SwanLab tracking: disabled costs nothing, offline/local write the metrics, resume keeps the experiment,
cloud without credentials only warns, and a failing tracker never stops training. No network is used."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.config import Preset, preset_from_dict
from engine.events import (
    CheckpointEvent,
    EvalEvent,
    Event,
    EventLog,
    SampleEvent,
    StageEndEvent,
    StageStartEvent,
    StepEvent,
    WarningEvent,
    iter_events,
    parse_event,
)
from engine.runs import tracking
from engine.runs.tracking import SwanlabTracker, event_metrics
from tests.support.fake_runs import step_fields
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]


def make_preset(mode: str, **swanlab: Any) -> Preset:
    return preset_from_dict({"name": "trk", "tracking": {"swanlab": {"mode": mode, **swanlab}}})


def step_event(stage: str, step: int, loss: float) -> dict[str, Any]:
    """A step's fields with no MFU (the log's None) and fixed speed and memory figures."""
    return step_fields(stage, step, 10, loss, tokens_per_s=1000.0, mfu=None, rss_mb=300.0)


@pytest.fixture
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user credentials or SWANLAB_* settings leak in; any run a failed test leaves open is finished."""
    for name in list(os.environ):
        if name.startswith("SWANLAB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    monkeypatch.chdir(tmp_path)  # swanlab also reads ./.env, ./swanlab.yaml and ./.swanlab/.netrc
    yield tmp_path
    import swanlab

    if swanlab.has_run():
        swanlab.get_run().finish()


def read_records(run_file: Path) -> list[dict[str, Any]]:
    """Decode a `run-<id>.swanlab` file with swanlab's own reader (the format `swanlab sync` uploads)."""
    from google.protobuf.json_format import MessageToDict
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    reader = DataStoreReader()
    reader.open(str(run_file))
    records = []
    for raw in reader:
        record = Record()
        record.ParseFromString(raw)
        records.append(MessageToDict(record))
    reader.close()
    return records


def scalars(records: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    return {(r["scalar"]["key"], int(r["scalar"]["step"])): r["scalar"]["value"]["number"]
            for r in records if "scalar" in r}


def session_dirs(logdir: Path, run_id: str) -> list[Path]:
    return sorted(logdir.glob(f"run-*-{run_id}"))


def run_script(body: str, tmp_path: Path, stdin: Any, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWANLAB_")}
    env.update(SWANLAB_ROOT=str(tmp_path / "swanlab-root"), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], cwd=tmp_path, env=env, stdin=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_event_metrics_prefixes_stage_and_skips_non_numbers() -> None:
    """Guards against logging bookkeeping (step, eta), missing readings, NaN or bools as curves, and against
    pretrain and sft curves colliding under one name."""
    step = StepEvent(stage="sft", step=3, total_steps=9, loss=2.0, lr=1e-3, grad_norm=float("nan"), tokens_per_s=5.0,
                     samples_per_s=1.0, mfu=None, eta_s=5.0, tokens_seen=10, epoch=0.5, mem_peak_mb=10)
    assert event_metrics(step) == {"sft/loss": 2.0, "sft/lr": 1e-3, "sft/tokens_per_s": 5.0, "sft/samples_per_s": 1.0,
                                   "sft/tokens_seen": 10.0, "sft/epoch": 0.5, "sft/mem_peak_mb": 10.0}
    evaluation = EvalEvent(stage="pretrain", step=4, eval_loss=1.5, heldout_path="x")
    assert event_metrics(evaluation) == {"pretrain/eval_loss": 1.5}
    assert event_metrics(EvalEvent(stage="sft", step=4, heldout_accuracy=0.5, heldout_correct=1)) == {
        "sft/heldout_accuracy": 0.5}
    others = [StageStartEvent(stage="sft", total_steps=1, start_step=0, resumed=False),
              CheckpointEvent(stage="sft", step=1, path="p", seconds=0.1), WarningEvent(message="m"),
              StageEndEvent(stage="sft", state="finished", step=1, total_steps=1, loss=1.0),
              SampleEvent(stage="sft", step=1, prompt="a", text="b")]
    for event in others:
        assert event_metrics(event) == {}


def test_disabled_returns_none_and_never_imports_swanlab(tmp_path: Path) -> None:
    """Guards against every run paying swanlab's import (~0.5 s, plus its side effects) with tracking off."""
    result = run_script("""
        import sys
        from pathlib import Path
        from engine.config import preset_from_dict
        from engine.events import EventLog
        from engine.runs.tracking import SwanlabTracker
        preset = preset_from_dict({"name": "trk"})
        assert preset.tracking.swanlab.mode == "disabled"
        assert SwanlabTracker.create(preset, Path("run"), EventLog()) is None
        print("swanlab" in sys.modules)
    """, tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_offline_writes_metrics_config_and_finish_record(hermetic: Path) -> None:
    """Guards against metrics that never reach disk (wrong keys, steps, or a run never finished), against
    the frozen preset missing from the experiment config, and against swanlab taking over Ctrl-C."""
    run_dir = hermetic / "runs" / "trk-0001"
    run_dir.mkdir(parents=True)
    sigint_before = signal.getsignal(signal.SIGINT)
    log = EventLog(run_dir / "events.jsonl")
    tracker = SwanlabTracker.create(make_preset("offline"), run_dir, log)
    assert tracker is not None and tracker.active
    assert signal.getsignal(signal.SIGINT) is sigint_before
    log.listeners.append(tracker)
    log.emit(StageStartEvent(stage="pretrain", total_steps=10, start_step=0, resumed=False))
    log.emit(StepEvent(**step_event("pretrain", 1, 4.0)))
    log.emit(StepEvent(**step_event("pretrain", 2, 3.0)))
    log.emit(EvalEvent(stage="pretrain", step=2, eval_loss=3.5))
    log.emit(CheckpointEvent(stage="pretrain", step=2, path="x", seconds=0.1))
    tracker.close()
    tracker.close()  # idempotent: the pipeline may close on both its error and normal paths
    log.close()

    saved = json.loads((run_dir / "tracking.json").read_text())
    assert saved["mode"] == "offline" and saved["experiment"] == "trk-0001"
    assert saved["logdir"] == str(run_dir / "swanlog")
    [session] = session_dirs(run_dir / "swanlog", saved["id"])
    assert saved["sessions"] == [str(session)]
    assert "name:" in (session / "files" / "config.yaml").read_text()  # the preset's fields are the config
    assert "value: trk" in (session / "files" / "config.yaml").read_text()
    records = read_records(session / f"run-{saved['id']}.swanlab")
    start = next(r["start"] for r in records if "start" in r)
    assert (start["project"], start["name"], start["id"]) == ("minimind-studio", "trk-0001", saved["id"])
    values = scalars(records)
    assert values[("pretrain/loss", 1)] == 4.0 and values[("pretrain/loss", 2)] == 3.0
    assert values[("pretrain/eval_loss", 2)] == 3.5
    assert values[("pretrain/rss_mb", 2)] == 300.0 and values[("pretrain/tokens_per_s", 1)] == 1000.0
    keys = {key for key, _ in values}
    assert not keys & {"pretrain/mfu", "pretrain/eta_s", "pretrain/step", "pretrain/total_steps"}
    assert records[-1]["finish"]["state"] == "RUN_STATE_FINISHED"
    assert not [e for e in iter_events(run_dir / "events.jsonl") if e.kind == "warning"]


def test_local_mode_without_dashboard_still_saves_and_warns(hermetic: Path) -> None:
    """Guards against local mode silently producing logs nobody can open: without swanlab[dashboard] we
    warn with the install command, and the metrics are still written (legacy logs/ and the run file)."""
    pytest.importorskip("swanlab")
    if __import__("importlib").util.find_spec("swanboard") is not None:
        pytest.skip("swanboard installed: the missing-dashboard warning does not apply")
    run_dir = hermetic / "run-local"
    run_dir.mkdir()
    events: list[Event] = []
    log = EventLog(None, [events.append])
    tracker = SwanlabTracker.create(make_preset("local", logdir=str(hermetic / "shared-swanlog")), run_dir, log)
    assert tracker is not None
    tracker(StepEvent(**step_event("sft", 5, 1.25)))
    tracker.close()
    [warning] = [e for e in events if isinstance(e, WarningEvent)]
    assert "swanlab[dashboard]" in warning.message
    saved = json.loads((run_dir / "tracking.json").read_text())
    [session] = session_dirs(hermetic / "shared-swanlog", saved["id"])
    assert list((session / "logs").glob("*/_summary.json"))
    assert scalars(read_records(session / f"run-{saved['id']}.swanlab"))[("sft/loss", 5)] == 1.25


def test_resume_continues_the_same_experiment(hermetic: Path) -> None:
    """Guards against a resumed run starting a second, unrelated SwanLab experiment: the id is kept in
    tracking.json and reused, so both sessions' folders carry it and `swanlab sync` merges them."""
    run_dir = hermetic / "run-resume"
    run_dir.mkdir()
    preset = make_preset("offline")
    first = SwanlabTracker.create(preset, run_dir, EventLog())
    first(StepEvent(**step_event("pretrain", 1, 4.0)))
    first.close("stopped")
    run_id = json.loads((run_dir / "tracking.json").read_text())["id"]

    # (swanlab names session folders run-<second>-<id>; a clash within one second makes it wait and retry)
    second = SwanlabTracker.create(preset, run_dir, EventLog())
    second(StepEvent(**step_event("pretrain", 2, 3.0)))
    second.close()

    saved = json.loads((run_dir / "tracking.json").read_text())
    assert saved["id"] == run_id
    sessions = session_dirs(run_dir / "swanlog", run_id)
    assert [str(s) for s in sessions] == saved["sessions"] and len(sessions) == 2
    per_session = [read_records(s / f"run-{run_id}.swanlab") for s in sessions]
    assert [next(r["start"]["id"] for r in recs if "start" in r) for recs in per_session] == [run_id, run_id]
    assert ("pretrain/loss", 1) in scalars(per_session[0]) and ("pretrain/loss", 2) in scalars(per_session[1])
    assert per_session[0][-1]["finish"]["state"] == "RUN_STATE_ABORTED"  # a stopped session, to be resumed


CLOUD_SCRIPT = """
    import json, time
    from pathlib import Path
    from engine.config import preset_from_dict
    from engine.events import EventLog
    from engine.runs.tracking import SwanlabTracker
    events = []
    preset = preset_from_dict({"name": "trk", "tracking": {"swanlab": {"mode": "cloud"}}})
    start = time.perf_counter()
    tracker = SwanlabTracker.create(preset, Path("run"), EventLog(None, [events.append]))
    print(json.dumps({"tracker": tracker is None, "seconds": time.perf_counter() - start,
                      "events": [e.model_dump() for e in events]}))
"""


@pytest.mark.parametrize("stdin_kind", ["devnull", "tty"])
def test_cloud_without_credentials_warns_fast_and_never_prompts(tmp_path: Path, stdin_kind: str) -> None:
    """Guards against a cloud preset on a box without login killing the run, or hanging on swanlab's
    interactive login prompt (with a TTY on stdin it would wait for a choice forever; the timeout catches it)."""
    master = slave = None
    if stdin_kind == "tty":
        master, slave = pty.openpty()
    try:
        result = run_script(CLOUD_SCRIPT, tmp_path, stdin=subprocess.DEVNULL if slave is None else slave, timeout=45)
    finally:
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tracker"] is True  # create returned None
    assert report["seconds"] < 10
    [warning] = report["events"]
    parse_event(warning)  # a reader validating events.jsonl accepts it
    assert warning["message"].startswith("SwanLab cloud login failed: RuntimeError")
    assert "training continues without tracking" in warning["message"] and "swanlab login" in warning["message"]
    assert not (tmp_path / "run" / "tracking.json").exists()


def test_init_that_hangs_is_abandoned_after_the_timeout(hermetic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against an unreachable server (connect timeouts, retries) holding up the start of training:
    create gives up after INIT_TIMEOUT_S, and a run that turns up later is finished, not left dangling."""
    import swanlab

    finished: list[str] = []
    release = threading.Event()

    class LateRun:
        id, dir = "late", "nowhere"

        def finish(self, state: str = "success", error: str | None = None) -> None:
            finished.append(state)

    def slow_init(**_: Any) -> LateRun:
        release.wait(10)  # the server answers only after create has given up
        return LateRun()

    monkeypatch.setattr(swanlab, "init", slow_init)
    monkeypatch.setattr(tracking, "INIT_TIMEOUT_S", 0.2)
    events: list[Event] = []
    start = time.perf_counter()
    assert SwanlabTracker.create(make_preset("offline"), hermetic / "run", EventLog(None, [events.append])) is None
    assert time.perf_counter() - start < 0.7
    assert [e.kind for e in events] == ["warning"] and "TimeoutError" in events[0].message
    release.set()
    wait_until(lambda: finished, timeout=5, what="the late run to be finished")
    assert finished == ["aborted"]


def test_log_failure_warns_once_and_training_continues() -> None:
    """Guards against a tracker exception escaping into the training loop (EventLog.emit would raise),
    against a warning per step, and against the warning re-entering the broken tracker."""
    calls: list[Any] = []

    class BrokenRun:
        def log(self, data: dict[str, float], step: int | None = None) -> None:
            calls.append(step)
            raise ConnectionError("upload queue died")

        def finish(self, state: str = "success", error: str | None = None) -> None:
            calls.append(("finish", state))

    events: list[Event] = []
    log = EventLog(None, [events.append])
    tracker = SwanlabTracker(BrokenRun(), log)
    log.listeners.append(tracker)
    for step in range(1, 5):
        log.emit(StepEvent(**step_event("pretrain", step, 1.0)))  # must not raise
    log.emit(EvalEvent(stage="pretrain", step=4, eval_loss=1.0))
    warnings = [e for e in events if isinstance(e, WarningEvent)]
    assert len(warnings) == 1 and "ConnectionError: upload queue died" in warnings[0].message
    assert calls == [1, ("finish", "aborted")]
    assert not tracker.active
    tracker.close()  # nothing left to finish; no second warning
    assert len([e for e in events if e.kind == "warning"]) == 1
    assert len([e for e in events if e.kind == "step"]) == 4
