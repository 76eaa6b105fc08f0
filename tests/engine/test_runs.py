"""Runs that outlive the terminal, tested with real processes: detach, stop, kill -9, resume, locks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest
from safetensors.torch import load_file

from engine.checkpoint import read_checkpoint
from engine.config import PROJECT_ROOT, save_preset
from engine.events import iter_events, read_events
from engine.pipeline import run_pipeline
from engine.run_state import RunState
from engine.runs import (
    RunLock,
    create_run,
    effective_state,
    find_run,
    new_run_id,
    read_status,
)

CLI = [sys.executable, "-m", "studio.cli"]


def wait_for(predicate: Callable[[], object], timeout: float = 120, what: str = "condition") -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)


def step_losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in iter_events(run_dir / "events.jsonl") if e["kind"] == "step"}


@pytest.fixture
def long_preset(make_preset, tmp_path: Path) -> Path:
    """A pretrain-only preset that runs for several seconds even on an idle machine (so a stop or kill
    lands mid-run) and checkpoints often (hidden 128: a save takes long enough to be hit)."""
    preset = make_preset(stages=["tokenizer", "pretrain"], model={"hidden_size": 128, "num_attention_heads": 4},
                         pretrain={"max_steps": 400, "save_interval": 5, "keep_checkpoints": 2, "batch_size": 8})
    path = tmp_path / "long.toml"
    save_preset(preset, path)
    return path


def launch(preset_path: Path, out_dir: Path) -> Path:
    done = cli("run", str(preset_path), "--detach")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    return out_dir / run_id


def test_run_ids_are_unique_and_readable(make_preset, tmp_path: Path) -> None:
    """Guards against two launches in the same second sharing a run directory."""
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    (tmp_path / "20260102-030405-x").mkdir()
    assert new_run_id("x", tmp_path, moment) == "20260102-030405-x-2"
    preset = make_preset()
    assert create_run(preset) != create_run(preset)


def test_crashed_is_derived_from_a_dead_process_or_stale_heartbeat() -> None:
    """Guards against a kill -9'd run showing as 'running' forever."""
    import psutil

    now = time.time()
    me = {"pid": os.getpid(), "pid_started_at": psutil.Process().create_time(), "host": socket.gethostname(), "heartbeat_at": now}
    assert effective_state({**me, "state": "running"}, now) == "running"
    assert effective_state({**me, "state": "running", "pid_started_at": 1.0}, now) == "crashed"  # pid reused
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert effective_state({**me, "state": "stopping", "pid": dead.pid}, now) == "crashed"
    remote = {"pid": 1, "host": "elsewhere", "state": "running"}
    assert effective_state({**remote, "heartbeat_at": now - 5}, now) == "running"
    assert effective_state({**remote, "heartbeat_at": now - 600}, now) == "crashed"
    assert effective_state({"state": "queued", "heartbeat_at": now - 600}, now) == "crashed"
    assert effective_state({**me, "state": "finished", "pid": dead.pid}, now) == "finished"


def test_run_states_stay_plain_strings_on_disk(make_preset) -> None:
    """Guards against the RunState enum leaking into the on-disk contract ("RunState.QUEUED" in status.json,
    which older studios and `jq` scripts would not read) or into text ("RunState.RUNNING" in a table on
    Python 3.11+), and against an unknown state from a newer writer crashing a reader."""
    run_dir = create_run(make_preset())
    assert json.loads((run_dir / "status.json").read_text())["state"] == "queued"
    assert '"state": "queued"' in (run_dir / "status.json").read_text()
    assert f"{RunState.RUNNING} {RunState.FAILED:>7}" == "running  failed" and str(RunState.CRASHED) == "crashed"
    assert effective_state({"state": "paused-by-a-newer-engine"}) is RunState.UNKNOWN
    assert effective_state({}) is RunState.UNKNOWN
    assert [s.value for s in RunState if s.live] == ["queued", "running", "stopping"]
    assert {s.value for s in RunState if s.terminal} == {"stopped", "finished", "failed", "crashed"}


def test_reader_waits_for_a_torn_last_line(tmp_path: Path) -> None:
    """Guards against a reader crashing on, or skipping, a line that is still being written."""
    path = tmp_path / "events.jsonl"
    full = [json.dumps({"v": 1, "t": 1.0, "kind": "warning", "message": f"m{i}"}) for i in range(3)]
    path.write_text(full[0] + "\n" + full[1] + "\n" + full[2][:10])
    events, offset = read_events(path)
    assert [e["message"] for e in events] == ["m0", "m1"]
    with open(path, "a") as handle:
        handle.write(full[2][10:] + "\n")
    events, offset = read_events(path, offset)
    assert [e["message"] for e in events] == ["m2"] and offset == path.stat().st_size


def test_a_locked_run_cannot_be_resumed_twice(make_preset) -> None:
    """Guards against two processes training the same run directory at once."""
    run_dir = create_run(make_preset())
    with RunLock(run_dir):
        done = cli("resume", str(run_dir))
    assert done.returncode == 2 and "already running" in done.stderr


def test_detached_run_outlives_the_shell_that_started_it(make_preset, tmp_path: Path) -> None:
    """Guards against a run dying with its terminal (SIGHUP / closed stdin) - the reference project's bug."""
    preset = make_preset(stages=["tokenizer", "pretrain"], pretrain={"max_steps": 60})
    save_preset(preset, tmp_path / "p.toml")
    shell = subprocess.run(["bash", "-c", f"{sys.executable} -m studio.cli run {tmp_path / 'p.toml'} --detach; exit 0"],
                           capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert shell.returncode == 0, shell.stderr
    run_dir = Path(preset.out_dir) / shell.stdout.strip().splitlines()[-1]
    assert read_status(run_dir).get("state") != "finished"  # the shell is gone, the run is not done yet
    wait_for(lambda: read_status(run_dir).get("state") == "finished", what="the detached run to finish")
    status = read_status(run_dir)
    assert status["step"] == 60 and os.getsid(0) != status.get("pid")
    log = (run_dir / "train.log").read_text()
    assert "pretrain step 60/60" in log and "run finished" in log


def test_stop_checkpoints_and_resume_finishes(long_preset: Path, make_preset) -> None:
    """Guards against `stop` losing work (no checkpoint) and `resume` restarting from scratch."""
    out_dir = Path(make_preset().out_dir)
    run_dir = launch(long_preset, out_dir)
    wait_for(lambda: read_status(run_dir).get("step", 0) >= 3 and read_status(run_dir).get("stage") == "pretrain",
             what="training to start")
    done = cli("stop", run_dir.name, "--out-dir", str(out_dir))
    assert done.returncode == 0 and "asked" in done.stdout
    wait_for(lambda: read_status(run_dir).get("state") == "stopped", what="the run to stop")
    stopped_at = read_checkpoint(run_dir / "checkpoints" / "pretrain" / "latest").step
    assert 3 <= stopped_at < 400
    done = cli("resume", run_dir.name, "--out-dir", str(out_dir), timeout=300)
    assert done.returncode == 0, done.stderr
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == 400
    starts = [e for e in iter_events(run_dir / "events.jsonl") if e["kind"] == "stage_start" and e["stage"] == "pretrain"]
    assert [s["start_step"] for s in starts] == [0, stopped_at]


def test_kill_9_anywhere_leaves_a_resumable_run_with_the_same_losses(long_preset: Path, make_preset) -> None:
    """Guards against kill -9 (even mid-checkpoint) leaving `latest` broken, a run shown as running, or a
    resumed run drifting from the loss curve of an uninterrupted one."""
    from engine.config import load_preset

    out_dir = Path(make_preset().out_dir)
    straight = create_run(load_preset(long_preset))
    run_pipeline(straight)
    expected = step_losses(straight)

    run_dir = launch(long_preset, out_dir)
    stage_dir = run_dir / "checkpoints" / "pretrain"
    killed_pid = None
    for kill_after_step in (6, 60, 150):
        def live_past_step(step: int = kill_after_step, old: int | None = killed_pid) -> bool:
            status = read_status(run_dir)  # the resumed process has claimed the run and trains
            return status.get("pid") != old and effective_state(status) == "running" and status.get("step", 0) >= step
        wait_for(live_past_step, what=f"a live run past step {kill_after_step}")
        if kill_after_step == 150:  # aim for the middle of a checkpoint write (best effort: saves are short)
            deadline = time.time() + 1.0
            while time.time() < deadline and not any(p.name.startswith(".step_") for p in stage_dir.iterdir()):
                time.sleep(0.001)
        killed_pid = read_status(run_dir)["pid"]
        os.kill(killed_pid, signal.SIGKILL)
        wait_for(lambda: effective_state(read_status(run_dir)) == "crashed", timeout=10, what="crashed state")
        latest = read_checkpoint(stage_dir / "latest")
        assert load_file(str(latest.path / "model.safetensors")) and load_file(str(latest.path / "trainer.safetensors"))
        done = cli("resume", run_dir.name, "--detach", "--out-dir", str(out_dir))
        assert done.returncode == 0, done.stderr
    wait_for(lambda: read_status(run_dir).get("state") == "finished", timeout=300, what="the resumed run to finish")

    seen = [(e["step"], e["loss"]) for e in iter_events(run_dir / "events.jsonl") if e["kind"] == "step"]
    assert {step for step, _ in seen} == set(expected)
    assert all(loss == expected[step] for step, loss in seen)  # re-done steps too: bit-for-bit on the CPU
    assert find_run(run_dir.name, out_dir) == run_dir


def test_runs_and_logs_commands_rebuild_the_view_from_disk(trained_run: Path) -> None:
    """Guards against the CLI views needing the process that wrote the run (re-attach from any shell)."""
    out_dir = trained_run.parent
    listing = cli("runs", "--out-dir", str(out_dir))
    assert listing.returncode == 0 and trained_run.name in listing.stdout and "finished" in listing.stdout
    logs = cli("logs", trained_run.name, "--out-dir", str(out_dir))
    assert logs.returncode == 0, logs.stderr
    assert "sft" in logs.stdout and "step 20/20" in logs.stdout and "checkpoint" in logs.stdout
    follow = cli("logs", "-f", trained_run.name, "--out-dir", str(out_dir), timeout=30)  # ends: the run is done
    assert follow.returncode == 0
    missing = cli("logs", "no-such-run", "--out-dir", str(out_dir))
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr
