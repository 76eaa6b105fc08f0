"""The run's owner (engine.runs.run.Run): its state machine, the one reading of "is its process alive", the only
writer of status.json, and run directories written before it existed."""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import PROJECT_ROOT, preset_from_dict
from engine.errors import RunBusy, RunStateError
from engine.events import StageStartEvent, iter_events
from engine.runs.liveness import effective_state, process_start_time
from engine.runs.run import TRANSITIONS, Run, read_status
from engine.runs.run_dir import create_run, summarize
from engine.runs.state import RunState

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_before_issue21"


@pytest.fixture
def run(tmp_path: Path) -> Run:
    preset = preset_from_dict({"name": "owner", "out_dir": str(tmp_path / "runs")})
    return Run(create_run(preset))


def test_the_state_machine_takes_each_named_transition_and_refuses_the_rest(run: Run) -> None:
    """Guards against a state written that its life does not allow (a run finished before it started, a
    finished run going back to running) — each was possible while 19 call sites wrote status.json freely."""
    assert run.state == RunState.QUEUED
    with pytest.raises(RunStateError, match="cannot finish a run that is queued"):
        run.finish()
    with pytest.raises(RunStateError, match="cannot stopping"):
        run.begin_stopping()
    run.claim()
    run.start(resumed=False)
    assert read_status(run.dir)["state"] == "running" and read_status(run.dir)["pid"] == os.getpid()
    run.begin_stopping()
    run.stopped("stop requested (control/stop)")
    with pytest.raises(RunStateError, match="cannot start a run that is stopped"):
        run.start()
    run.reserve()  # a resume
    assert read_status(run.dir)["state"] == "queued" and read_status(run.dir)["pid_started_at"] is None
    run.claim()
    run.start()
    run.finish()
    with pytest.raises(RunStateError):
        run.fail("late")
    status = read_status(run.dir)
    assert status["state"] == "finished" and status["exit_reason"] == "all stages done"
    with pytest.raises(RunStateError, match="not progress fields"):
        run.record(state="running")  # a state never rides in on a progress update


def test_every_transition_of_the_table_is_reachable_from_each_state_it_leaves(tmp_path: Path) -> None:
    """Guards against a table that names a transition its method cannot take (a typo in a state set would
    silently refuse a legal change at run time)."""
    methods = {"reserve": lambda r: r.reserve(), "claim": lambda r: r.claim(), "start": lambda r: r.start(),
               "stopping": lambda r: r.begin_stopping(), "finish": lambda r: r.finish(),
               "stop": lambda r: r.stopped("asked"), "fail": lambda r: r.fail("broke"), "restart": lambda r: r.restart(1)}
    assert set(methods) == set(TRANSITIONS)
    for name, (sources, target) in TRANSITIONS.items():
        for source in sources - {RunState.CRASHED, RunState.UNKNOWN}:
            run_dir = tmp_path / f"{name}-{source}"
            (run_dir / "control").mkdir(parents=True)
            # this process recorded as the owner, so a live source state reads as live
            Run(run_dir)._write({"state": source, "pid": os.getpid(), "pid_started_at": process_start_time(os.getpid())})
            methods[name](Run(run_dir))
            assert read_status(run_dir)["state"] == target, (name, source)


def _zombie() -> subprocess.Popen:
    """A child that has died and that nobody reaped: what a SIGKILLed detached run is under a PID 1 that never
    reaps orphans (`sleep infinity` in a container)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.time() + 10
    import psutil

    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the child never became a zombie"
        time.sleep(0.02)
    return child  # kept referenced and not waited for: it stays a zombie until the test reaps it


def test_a_zombie_is_a_dead_process_so_its_run_can_be_resumed_and_deleted(run: Run) -> None:
    """Guards against a killed run that was not reaped reading as live for ever: psutil still gives a zombie's
    start time, so `resume`, `stop` and `delete` all said "run ... is running (pid N); stop it first"."""
    child = _zombie()
    try:
        started = psutil_create_time(child.pid)
        run._write({"state": "running", "pid": child.pid, "pid_started_at": started})
        assert effective_state(read_status(run.dir)) == RunState.CRASHED
        assert summarize(run.dir).state == RunState.CRASHED
        run.reserve()  # refused before: RunBusy "is running (pid N)"
        assert read_status(run.dir)["state"] == "queued"
    finally:
        child.wait()


def psutil_create_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def test_a_reused_pid_and_a_stale_reservation_read_as_crashed(run: Run) -> None:
    """Guards against pid reuse (after a reboot, the recorded pid belongs to someone else) keeping a run "live",
    and against a reservation whose process never came (the launcher died) blocking the run for ever."""
    run._write({"state": "running", "pid": os.getpid(), "pid_started_at": process_start_time(os.getpid()) - 3600})
    assert run.state == RunState.CRASHED
    run.reserve()
    assert run.state == RunState.QUEUED
    with pytest.raises(RunBusy, match="is starting"):
        run.reserve()  # a second resume while the first one's process starts
    run._write({"heartbeat_at": 0})  # (stamped anew by the write: make it old by hand)
    status = read_status(run.dir)
    assert effective_state(status, now=status["heartbeat_at"] + 61) == RunState.CRASHED


def test_status_json_is_written_by_one_module() -> None:
    """Guards against status.json being written from many places again (it was 19 call sites in 4 files, and
    nothing owned its state machine): the file's name appears in code only in engine/runs/run.py."""
    named_it = []
    for root in ("engine", "studio"):
        for path in (PROJECT_ROOT / root).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                          and node.body and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and node.value == "status.json" and id(node) not in docstrings:
                    named_it.append(str(path.relative_to(PROJECT_ROOT)))
    assert sorted(set(named_it)) == ["engine/runs/run.py"]


def copy_old_run(runs: Path) -> Path:
    """The run directory that main's code wrote before this change (a micro model stopped at SFT step 3 of 6),
    with the absolute paths it froze pointed at this checkout and this test's folder."""
    run_dir = runs / FIXTURE.name
    shutil.copytree(FIXTURE, run_dir, symlinks=True)
    for path in [run_dir / "preset.toml", run_dir / "events.jsonl", *run_dir.glob("checkpoints/*/step_*/state.json")]:
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("@PROJECT_ROOT@", str(PROJECT_ROOT)).replace("@OUT@", str(runs.parent)),
                        encoding="utf-8")
    return run_dir


@pytest.mark.slow
def test_a_run_directory_written_before_the_run_owner_reads_and_resumes(tmp_path: Path) -> None:
    """Guards against the run owner changing the run-directory contract: a directory written by the code before
    it (status fields, states, checkpoints, the stop request that ended it) must list, resume through the CLI
    and finish where it left off."""
    runs = tmp_path / "runs"
    run_dir = copy_old_run(runs)
    row = summarize(run_dir)
    assert (row.state, row.stage, row.step, row.total_steps) == (RunState.STOPPED, "sft", 3, 6)
    done = subprocess.run([sys.executable, "-m", "studio.cli", "resume", run_dir.name, "--out-dir", str(runs)],
                          capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == 6 and sorted(status["stages_done"]) == ["pretrain", "sft", "tokenizer"]
    starts = [e for e in iter_events(run_dir / "events.jsonl") if isinstance(e, StageStartEvent) and e.stage == "sft"]
    assert [(e.start_step, e.resumed) for e in starts] == [(0, False), (3, True)]
    assert (run_dir / "checkpoints" / "sft" / "latest").resolve().name == "step_000006"


@pytest.mark.slow
def test_a_foreground_run_parses_its_preset_once(make_preset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against the preset being read again at each layer a run passes through (a foreground run parsed it
    three times, a torchrun job five): the CLI parses the file once and the Run carries the frozen preset to
    the pipeline and every stage."""
    import engine.config as config
    from engine.config import save_preset
    from studio.cli import main

    path = tmp_path / "micro.toml"
    save_preset(make_preset(stages=["tokenizer", "pretrain", "sft"]), path)
    parsed = []
    real = config.preset_from_dict
    monkeypatch.setattr(config, "preset_from_dict", lambda data, source="preset": parsed.append(source) or real(data, source))
    assert main(["run", str(path)]) == 0
    assert parsed == [str(path)]
    (run_dir,) = (tmp_path / "runs").iterdir() if (tmp_path / "runs").is_dir() else [None]
    assert run_dir is not None and read_status(run_dir)["state"] == "finished"


def test_the_leftovers_of_a_deleter_that_died_a_zombie_are_removed(tmp_path: Path) -> None:
    """Guards against the twin of the zombie bug in deleting: a delete killed half-way in a container that never
    reaps leaves a zombie whose pid still exists, and its half-removed run (gigabytes) was kept for ever."""
    from engine.runs.manage import TRASH_PREFIX, _remove_abandoned_trash

    child = _zombie()
    try:
        trash = tmp_path / f"{TRASH_PREFIX}{child.pid}-20250101-000000-old"
        (trash / "checkpoints").mkdir(parents=True)
        alive = tmp_path / f"{TRASH_PREFIX}{os.getpid()}-20250101-000000-mine"  # a delete under way in this process
        alive.mkdir()
        _remove_abandoned_trash(tmp_path)
        assert not trash.exists() and alive.exists()
    finally:
        child.wait()


def test_one_unreadable_run_is_a_broken_row_not_a_failed_listing(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    """Guards against `minimind-studio runs` failing as a whole on one hand-edited preset.toml (the studio's table
    showed such a run as broken; the CLI's listing, a second copy of the same loop, raised instead)."""
    from studio.cli import main

    broken = run.dir.parent / "20250101-000000-edited"
    (broken / "control").mkdir(parents=True)
    (broken / "preset.toml").write_text("stages = [", encoding="utf-8")  # not TOML; no status.json names it
    assert main(["runs", "--out-dir", str(run.dir.parent)]) == 0
    printed = capsys.readouterr().out
    assert "broken" in printed and run.name[:15] in printed
