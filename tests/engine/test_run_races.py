"""Several shells on one runs folder at once, with real processes: resume, stop, delete and launch racing
each other (engine.runs.manage, RunLock). The studio's side of the same races is in
tests/studio/test_runs_races.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import PROJECT_ROOT
from engine.errors import ResourceError, RunBusy
from engine.events import iter_events
from engine.runs.execute import start_detached
from engine.runs.manage import TRASH_PREFIX, delete_run
from engine.runs.run import Run, RunLock
from engine.runs.run_dir import effective_state, list_runs, read_status
from engine.runs.state import RunState
from tests.support.runs_cli import at_once, cli, copy_run, engine_processes
from tests.support.wait import wait_until

BUSY = ("is starting", "being started", "already running", "is running", "being deleted")


def one_paragraph_error(done: subprocess.CompletedProcess) -> str:
    """The refusal a user reads: exit 2, one `error:` paragraph, no traceback."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr
    return " ".join(done.stderr.split())


def session_events(run_dir: Path) -> list:
    """The events of the run's last session (from its last pretrain stage_start)."""
    events = list(iter_events(run_dir / "events.jsonl"))
    start = max(i for i, e in enumerate(events) if e.kind == "stage_start" and e.stage == "pretrain")
    return events[start:]


def wait_stopped(run_dir: Path) -> None:
    # status.json says stopped a moment before the process prints its last line and exits: wait for both.
    wait_until(lambda: read_status(run_dir).get("state") == "stopped" and not engine_processes(run_dir),
               timeout=120, what="the run to stop and its process to exit")


@pytest.mark.slow
def test_two_resumes_at_once_one_trains_and_two_stops_make_one_clean_stop(stopped_run: Path, live_runs: Path) -> None:
    """Guards against two shells resuming one stopped run at the same moment both being told "resuming"
    while two processes start on it (before: each checked the lock, found it free, and launched a process;
    one of them then died on the lock, writing "run failed" into the live run's log), and against two stops
    from two places making two checkpoints or an unclean end."""
    runs = live_runs
    run_dir = copy_run(stopped_run, runs)
    first, second = at_once(("resume", run_dir.name, "--detach", "--out-dir", str(runs)),
                            ("resume", run_dir.name, "--detach", "--out-dir", str(runs)))
    assert sorted([first.returncode, second.returncode]) == [0, 2]
    refused = one_paragraph_error(first if first.returncode else second)
    assert run_dir.name in refused and any(word in refused for word in BUSY)

    status = wait_until(lambda: (s := read_status(run_dir)).get("state") == "running" and s.get("step", 0) >= 3 and s,
                        timeout=120, what="the resumed run to train")
    assert engine_processes(run_dir) == [status["pid"]]  # one process trains it

    stops = at_once(("stop", run_dir.name, "--out-dir", str(runs)), ("stop", run_dir.name, "--out-dir", str(runs)))
    assert [s.returncode for s in stops] == [0, 0]
    # The second stop finds the run stopping, or already stopped (its first step after the first stop is short).
    assert any("asked" in s.stdout for s in stops)
    assert all(any(said in s.stdout for said in ("asked", "already stopping", "nothing to stop")) for s in stops)
    wait_stopped(run_dir)
    events = session_events(run_dir)
    assert [e.kind for e in events].count("checkpoint") == 1  # one stop, one checkpoint
    assert [(e.kind, e.state) for e in events if e.kind == "stage_end"] == [("stage_end", "stopped")]
    log = (run_dir / "train.log").read_text()
    assert "RunBusy" not in log and "run failed" not in log and log.count("run stopped") == 1


@pytest.mark.slow
def test_a_stop_given_while_a_resume_starts_up_is_obeyed(stopped_run: Path, live_runs: Path) -> None:
    """Guards against a stop issued in the seconds a resumed run spends starting up (importing torch) being
    erased: the new process used to delete control/stop as "the last session's", then train to the end."""
    runs = live_runs
    run_dir = copy_run(stopped_run, runs)
    Run(run_dir).reserve()  # what `resume` and the studio do before launching
    done = cli("stop", run_dir.name, "--out-dir", str(runs))
    assert done.returncode == 0 and "asked" in done.stdout  # a queued run is live: the stop is taken
    start_detached(Run(run_dir), resume=True)
    wait_stopped(run_dir)
    assert read_status(run_dir)["step"] <= 2  # stopped after its first step, not 100,000 steps later
    assert [e.kind for e in session_events(run_dir)].count("checkpoint") == 1


def test_delete_refuses_a_live_or_starting_run_and_a_resume_refuses_a_run_being_deleted(stopped_run: Path,
                                                                                         live_runs: Path) -> None:
    """Guards against `delete` removing a run that a process is training or about to train (it checked the
    state only, not the lock: a resume that had taken the lock but not yet written "running" was deleted
    from under it), and against a resume starting on a run whose delete is under way."""
    runs = live_runs
    run_dir = copy_run(stopped_run, runs)
    delete = ("delete", run_dir.name, "--yes", "--out-dir", str(runs))

    Run(run_dir).reserve()  # a resume between its reservation and its process taking the lock
    assert "is starting" in one_paragraph_error(cli(*delete))
    with RunLock(run_dir):  # a live run process
        Run(run_dir).claim()
        Run(run_dir).start()
        assert "already running" in one_paragraph_error(cli(*delete))
    assert run_dir.is_dir() and (run_dir / "checkpoints" / "pretrain" / "latest").is_dir()

    Run(run_dir).stopped("stop requested (control/stop)")
    with RunLock(run_dir, purpose="delete"):  # a delete under way in another shell
        assert "being deleted" in one_paragraph_error(cli("resume", run_dir.name, "--detach", "--out-dir", str(runs)))
    assert not engine_processes(run_dir)


def test_delete_removes_the_run_at_once_for_every_reader_and_a_late_resume_says_so(stopped_run: Path,
                                                                                   live_runs: Path) -> None:
    """Guards against a half-deleted run showing up in listings (a studio scanning while rmtree runs), a
    resume that found the run before it was deleted writing into a folder that no longer exists (a crash
    with a traceback), and the leftovers of a delete that was killed half-way staying on disk forever."""
    runs = live_runs
    run_dir = copy_run(stopped_run, runs)
    abandoned = runs / f"{TRASH_PREFIX}4000000-20250101-000000-old"  # a deleter killed mid-way (pid long gone)
    copy_run(stopped_run, runs, abandoned.name)
    assert list_runs(runs) == [run_dir]  # hidden from every listing

    asked = cli("delete", run_dir.name, "--out-dir", str(runs))  # stdin closed: the question gets no "yes"
    assert asked.returncode == 1 and "not deleted" in asked.stdout and run_dir.is_dir()
    done = cli("delete", run_dir.name, "--yes", "--out-dir", str(runs))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(runs)) == []  # the run and the abandoned leftovers
    assert "no run" in one_paragraph_error(cli("resume", run_dir.name, "--out-dir", str(runs)))
    with pytest.raises(ResourceError, match="no longer exists"):
        Run(run_dir).reserve()  # a resume that resolved the run before the delete


def test_two_launches_of_one_preset_in_the_same_second_get_two_run_directories(make_preset, tmp_path: Path) -> None:
    """Guards against two shells (or studios) launching the same preset at once sharing one run directory:
    the id is the launch second, so both pick the same name; creating it must be atomic, the loser taking
    the next free suffix."""
    from engine.config import save_preset

    preset = make_preset()
    save_preset(preset, tmp_path / "p.toml")
    go = tmp_path / "go"
    script = ("import sys, time, pathlib\n"
              "from engine.config import load_preset\n"
              "from engine.runs.run_dir import create_run\n"
              "preset = load_preset(sys.argv[1])\n"
              "pathlib.Path(sys.argv[3]).touch()\n"
              "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.001)\n"
              "print(create_run(preset).name)\n")
    launchers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "p.toml"), str(go), str(tmp_path / f"ready{n}")],
                                  stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT) for n in range(4)]
    wait_until(lambda: all((tmp_path / f"ready{n}").exists() for n in range(4)), what="the launchers to be ready")
    go.touch()  # all four create their run in the same few milliseconds
    ids = [p.communicate(timeout=60)[0].strip() for p in launchers]
    assert all(p.returncode == 0 for p in launchers)
    assert len(set(ids)) == 4 and sorted(r.name for r in list_runs(preset.out_dir)) == sorted(ids)
    for run_id in ids:
        status = json.loads((Path(preset.out_dir) / run_id / "status.json").read_text())
        assert status["run_id"] == run_id and effective_state(status) == RunState.QUEUED


def test_a_delete_waits_for_no_one_and_says_who_holds_the_run(stopped_run: Path, live_runs: Path) -> None:
    """Guards against delete_run (the studio's path) deleting while a launcher holds the run's lock, or
    blocking until it is free (a studio frozen on a key press), or naming the wrong holder."""
    run_dir = copy_run(stopped_run, live_runs)
    with RunLock(run_dir, purpose="launch"), pytest.raises(RunBusy, match=f"being started by another command right now "
                                                                          f"\\(pid {os.getpid()}\\)"):
        delete_run(run_dir)
    assert run_dir.is_dir()
