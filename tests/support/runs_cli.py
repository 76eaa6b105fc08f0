"""Real processes on one runs folder: the CLI as a user's shell runs it, a stopped run to resume, and the
engine processes that are training a given run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from engine.config import PROJECT_ROOT

CLI = [sys.executable, "-m", "studio.cli"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`minimind-studio ARGS` to the end; stdin closed (a question asked gets end-of-file)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT,
                          stdin=subprocess.DEVNULL)


def spawn_cli(*args: str) -> subprocess.Popen:
    """`minimind-studio ARGS` started and left running: start several, then `communicate()` each."""
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL)


def at_once(*commands: tuple[str, ...], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Start every command before waiting for any; their results in the same order."""
    started = [(command, spawn_cli(*command)) for command in commands]
    results = []
    for command, process in started:
        out, err = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return results


def stopped_run_template(corpus: tuple[Path, Path], root: Path) -> Path:
    """A tokenizer -> pretrain run of the tiny preset stopped (on request) after its first step, with its
    checkpoint: a run to resume. Its pretrain stage is 100,000 steps long, so a resumed copy trains until it
    is stopped. Copy it with `copy_run`; never resume the template itself."""
    from engine.runs.pipeline import run_pipeline
    from engine.runs.run_dir import create_run, request_stop
    from tests.support.presets import preset_factory

    make = preset_factory(corpus, root)
    run_dir = create_run(make(stages=["tokenizer", "pretrain"], pretrain={"max_steps": 100_000, "save_interval": 100_000}))
    request_stop(run_dir)  # seen after step 1: checkpoint and stop
    assert run_pipeline(run_dir).state == "stopped"
    return run_dir


def copy_run(template: Path, runs_dir: Path, run_id: str = "20260101-000000-unit") -> Path:
    """A copy of a run directory under runs_dir (checkpoints' `latest` links kept as links)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(template, runs_dir / run_id, symlinks=True))


def engine_processes(run_dir: Path, *, under: bool = False) -> list[int]:
    """The pids of live `python -m engine RUN_DIR ...` processes (what a detached run executes) for this run,
    or, with `under`, for any run inside the folder run_dir."""
    import psutil

    pids = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE or cmdline[1:3] != ["-m", "engine"] or len(cmdline) < 4:
            continue
        target = Path(cmdline[3]).resolve()
        if target == run_dir.resolve() or (under and run_dir.resolve() in target.parents):
            pids.append(process.pid)
    return pids


def kill_engine_processes(runs_dir: Path) -> None:
    """SIGKILL the detached runs still training inside runs_dir (after a test that failed half-way)."""
    for pid in engine_processes(runs_dir, under=True):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
