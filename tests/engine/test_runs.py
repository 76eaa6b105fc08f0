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

import pytest
from safetensors.torch import load_file

from engine.checkpoints.checkpoint import read_checkpoint
from engine.config import PROJECT_ROOT, save_preset
from engine.events import iter_events, read_events
from engine.runs.pipeline import run_pipeline
from engine.runs.run import RunLock
from engine.runs.run_dir import (
    create_run,
    effective_state,
    find_run,
    new_run_id,
    read_status,
)
from engine.runs.state import RunState
from tests.support.wait import wait_until

CLI = [sys.executable, "-m", "studio.cli"]
STALL_IN_SAVE = Path(__file__).resolve().parents[1] / "support" / "stall_in_save.py"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)


def step_losses(run_dir: Path) -> dict[int, float]:
    return {e.step: e.loss for e in iter_events(run_dir / "events.jsonl") if e.kind == "step"}


def save_long_preset(make_preset, path: Path, max_steps: int) -> Path:
    """A pretrain-only preset that runs for seconds even on an idle machine (so a stop or kill lands
    mid-run) and checkpoints every 5 steps (hidden 128)."""
    preset = make_preset(stages=["tokenizer", "pretrain"], model={"hidden_size": 128, "num_attention_heads": 4},
                         pretrain={"max_steps": max_steps, "save_interval": 5, "keep_checkpoints": 2, "batch_size": 8})
    save_preset(preset, path)
    return path


@pytest.fixture
def long_preset(make_preset, tmp_path: Path) -> Path:
    return save_long_preset(make_preset, tmp_path / "long.toml", 400)


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
    assert [e.message for e in events] == ["m0", "m1"]
    with open(path, "a") as handle:
        handle.write(full[2][10:] + "\n")
    events, offset = read_events(path, offset)
    assert [e.message for e in events] == ["m2"] and offset == path.stat().st_size


def test_a_locked_run_cannot_be_resumed_twice(make_preset) -> None:
    """Guards against two processes training the same run directory at once."""
    run_dir = create_run(make_preset())
    with RunLock(run_dir):
        done = cli("resume", str(run_dir))
    assert done.returncode == 2 and "already running" in done.stderr


@pytest.mark.slow
def test_detached_run_outlives_the_shell_that_started_it(make_preset, tmp_path: Path) -> None:
    """Guards against a run dying with its terminal (SIGHUP / closed stdin) - the reference project's bug."""
    preset = make_preset(stages=["tokenizer", "pretrain"], pretrain={"max_steps": 60})
    save_preset(preset, tmp_path / "p.toml")
    shell = subprocess.run(["bash", "-c", f"{sys.executable} -m studio.cli run {tmp_path / 'p.toml'} --detach; exit 0"],
                           capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert shell.returncode == 0, shell.stderr
    run_dir = Path(preset.out_dir) / shell.stdout.strip().splitlines()[-1]
    assert read_status(run_dir).get("state") != "finished"  # the shell is gone, the run is not done yet
    # status.json says finished a moment before the process prints its last line: wait for that line.
    wait_until(lambda: read_status(run_dir).get("state") == "finished"
               and "run finished" in (run_dir / "train.log").read_text(), what="the detached run to finish")
    status = read_status(run_dir)
    assert status["step"] == 60 and os.getsid(0) != status.get("pid")
    log = (run_dir / "train.log").read_text()
    assert "pretrain step 60/60" in log and "run finished" in log


@pytest.mark.slow
def test_stop_checkpoints_and_resume_finishes(long_preset: Path, make_preset) -> None:
    """Guards against `stop` losing work (no checkpoint) and `resume` restarting from scratch."""
    out_dir = Path(make_preset().out_dir)
    run_dir = launch(long_preset, out_dir)
    wait_until(lambda: read_status(run_dir).get("step", 0) >= 3 and read_status(run_dir).get("stage") == "pretrain",
             what="training to start")
    done = cli("stop", run_dir.name, "--out-dir", str(out_dir))
    assert done.returncode == 0 and "asked" in done.stdout
    wait_until(lambda: read_status(run_dir).get("state") == "stopped", what="the run to stop")
    stopped_at = read_checkpoint(run_dir / "checkpoints" / "pretrain" / "latest").step
    assert 3 <= stopped_at < 400
    done = cli("resume", run_dir.name, "--out-dir", str(out_dir), timeout=300)
    assert done.returncode == 0, done.stderr
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == 400
    starts = [e for e in iter_events(run_dir / "events.jsonl") if e.kind == "stage_start" and e.stage == "pretrain"]
    assert [s.start_step for s in starts] == [0, stopped_at]


def live_past(run_dir: Path, step: int) -> dict | None:
    """The run's status once its live process trains past `step`. The step is read from events.jsonl, which has
    every step: status.json's step is refreshed only every 2 s, and a fast run can pass step 6 and finish
    between two refreshes, never showing a live step past 6 there."""
    status = read_status(run_dir)
    if effective_state(status) != "running" or not (run_dir / "events.jsonl").exists():
        return None
    steps = [e.step for e in iter_events(run_dir / "events.jsonl") if e.kind == "step"]
    return status if steps and steps[-1] >= step else None


def kill_9(run_dir: Path, pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: effective_state(read_status(run_dir)) == "crashed", timeout=10, what="the crashed state")


@pytest.mark.slow
def test_kill_9_mid_run_and_mid_checkpoint_write_leaves_a_resumable_run_with_the_same_losses(
        make_preset, tmp_path: Path) -> None:
    """Guards against kill -9 (at any step, and inside a checkpoint write) leaving `latest` broken or
    pointing at a half-written checkpoint, a run shown as running, a torn temporary that is never
    cleared, or a resumed run drifting from the loss curve of an uninterrupted one."""
    from engine.config import load_preset

    preset_path = save_long_preset(make_preset, tmp_path / "kill.toml", 120)
    out_dir = Path(make_preset().out_dir)
    straight = create_run(load_preset(preset_path))
    run_pipeline(straight)
    expected = step_losses(straight)

    # Killed wherever it happens to be, once past step 6.
    run_dir = launch(preset_path, out_dir)
    stage_dir = run_dir / "checkpoints" / "pretrain"
    first = wait_until(lambda: live_past(run_dir, 6), what="a live run past step 6")
    kill_9(run_dir, first["pid"])
    resumed_from = read_checkpoint(stage_dir / "latest").step

    # Killed inside the write of a checkpoint: resumed by a driver that stalls half-way through the
    # save of step `stall_at` (see tests/support/stall_in_save.py), after one complete save of its own.
    stall_at, marker = resumed_from + 10, tmp_path / "stalled.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
    with open(run_dir / "train.log", "ab") as log:
        driver = subprocess.Popen([sys.executable, str(STALL_IN_SAVE), str(run_dir), str(stall_at), str(marker)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=PROJECT_ROOT, start_new_session=True)
    try:
        stalled = json.loads(wait_until(lambda: marker.exists() and marker.read_text(), timeout=120,
                                        what=f"the save of step {stall_at} to stall"))
        torn = Path(stalled["tmp"])
        assert torn.parent == stage_dir and torn.name == f".step_{stall_at:06d}.tmp-{driver.pid}"
        assert (torn / "trainer.safetensors").stat().st_size == stalled["written"] < stalled["size"]
        assert read_status(run_dir)["pid"] == driver.pid  # the process killed is the one writing
    finally:
        driver.kill()  # SIGKILL, while it is inside the write
        driver.wait()  # reaped: a zombie would still look alive
    wait_until(lambda: effective_state(read_status(run_dir)) == "crashed", timeout=10, what="the crashed state")
    assert torn.is_dir() and not (stage_dir / f"step_{stall_at:06d}").exists()  # the write never finished
    latest = read_checkpoint(stage_dir / "latest")
    assert latest.step == stall_at - 5  # still the previous checkpoint, complete and loadable
    assert load_file(str(latest.path / "model.safetensors")) and load_file(str(latest.path / "trainer.safetensors"))

    done = cli("resume", run_dir.name, "--detach", "--out-dir", str(out_dir))
    assert done.returncode == 0, done.stderr
    wait_until(lambda: read_status(run_dir).get("state") == "finished", timeout=300, what="the resumed run to finish")
    assert not torn.exists()  # the next save cleared the torn temporary

    seen = [(e.step, e.loss) for e in iter_events(run_dir / "events.jsonl") if e.kind == "step"]
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
