"""Running a preset on several processes: torchrun under a supervisor that owns the run directory's lifetime.

A run whose world is one process trains in the calling process (engine/runs/pipeline.py), exactly as
always. A larger world is started as

    supervisor (this module: run lock, heartbeat, status pid, signals, restarts)
      └── torchrun (torch.distributed.run: rendezvous, one worker per GPU, teardown when one fails)
            └── python -m engine RUN_DIR --rank   (every rank; rank 0 writes the run directory)

Why a supervisor around torchrun rather than torchrun alone:
- The lock and heartbeat belong to the job, not to rank 0: a rank can die and be relaunched while the
  run stays "running" to the studio, and the lock still keeps a second launch out.
- torchrun exits 1 even after a clean stop; the truth is in status.json, which rank 0 writes. On a
  failure, the root cause is in torchrun's per-rank error files (`--log-dir`, the workers' `@record`),
  not in the surviving ranks' "connection reset"; the supervisor puts it in `exit_reason`.
- torchrun's own `--max-restarts` hung on gloo (restarted workers read the dead attempt's address from
  the store), so `distributed.max_restarts` relaunches torchrun afresh, resuming from the newest
  checkpoint through the project's own resume.
- A stop (SIGTERM, SIGHUP, SIGINT, or `minimind-studio stop`) becomes control/stop, which rank 0 reads
  and every rank agrees on inside a step; torchrun is started in its own session so a closing terminal
  reaches only the supervisor (torchrun would otherwise kill the workers after its own short grace time).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.config import TRAIN_STAGES, DistributedConfig, Preset
from engine.events import ErrorEvent, EventLog, WarningEvent
from engine.runs.execute import rank_command
from engine.runs.run import Run
from engine.runs.run_dir import engine_env, handling_stop_signals
from engine.runs.state import RunState

# Seconds between looks at events.jsonl when a foreground run follows its ranks' progress.
FOLLOW_S = 0.5


def resolve_nproc(value: int | str) -> int:
    """nproc_per_node as a number: auto is one process per visible GPU (1 without a GPU)."""
    if value != "auto":
        return int(value)
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def world_size(preset: Preset) -> int:
    return resolve_nproc(preset.distributed.nproc_per_node) * preset.distributed.nnodes


def keep_global_batch(old: Preset, new: Preset) -> tuple[Preset, list[str]]:
    """`new` (the same run on another number of processes) with each training stage's accumulation_steps
    changed so that a step still sees the same number of sequences; and a line per change. A stage whose
    global batch the new world cannot make up keeps its settings (the loop refuses to resume it mid-stage)."""
    old_world, new_world = world_size(old), world_size(new)
    notes: list[str] = []
    if old_world == new_world:
        return new, notes
    updates: dict[str, Any] = {}
    for stage in TRAIN_STAGES:
        cfg = old.stage(stage)
        global_batch, per_micro = cfg.batch_size * cfg.accumulation_steps * old_world, cfg.batch_size * new_world
        if global_batch % per_micro == 0 and global_batch // per_micro != cfg.accumulation_steps:
            updates[stage] = cfg.model_copy(update={"accumulation_steps": global_batch // per_micro})
            notes.append(f"{stage}: accumulation_steps {cfg.accumulation_steps} -> {global_batch // per_micro} keeps "
                         f"{global_batch} sequences per step on {new_world} process(es)")
    return new.model_copy(update=updates), notes


def torchrun_command(run_dir: Path, preset: Preset, *, resume: bool, log_dir: Path, attempt: int = 0) -> list[str]:
    """The torchrun command line for this node."""
    d: DistributedConfig = preset.distributed
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={resolve_nproc(d.nproc_per_node)}",
               "--max-restarts=0", f"--log-dir={log_dir}"]
    if d.nnodes == 1:
        command.append("--standalone")  # a free local port: two single-node runs never collide
    elif d.rdzv_backend == "static":
        host, _, port = d.rdzv_endpoint.rpartition(":")
        command += [f"--nnodes={d.nnodes}", f"--node-rank={d.node_rank}", f"--master-addr={host}", f"--master-port={port}"]
    else:
        command += [f"--nnodes={d.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={d.rdzv_endpoint}",
                    f"--rdzv-id=minimind-{preset.name}-{attempt}"]
    command += rank_command(str(run_dir), resume)
    return command


def worker_env(preset: Preset) -> dict[str, str]:
    env = engine_env()
    if "OMP_NUM_THREADS" not in os.environ:
        # CPU processes share the cores instead of each spinning up a thread per core (torchrun would set 1).
        per_node = resolve_nproc(preset.distributed.nproc_per_node)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_node))
    return env


# What a surviving rank says when a peer died: an echo of the failure, never its cause.
ECHOES = ("DistBackendError", "DistNetworkError", "Connection closed by peer", "Connection reset by peer",
          "Broken pipe", "NCCL communicator was aborted")


@dataclass
class RankFailure:
    rank: int  # global rank
    message: str  # the last line of the rank's exception ("TypeError: ...")
    echo: bool  # a peer's death seen from here
    at_ns: int  # when the error file was written


def rank_failures(log_dir: Path, node_rank: int, nproc: int) -> list[RankFailure]:
    """The error files torchrun's workers wrote (@record), root cause first: a rank's own error before the
    survivors' echoes of it, then the earliest. torchrun's layout: <log_dir>/<id>/attempt_<n>/<local rank>/error.json."""
    failures = []
    for error_file in log_dir.rglob("error.json"):
        try:
            payload = json.loads(error_file.read_text(encoding="utf-8"))
            local_rank = int(error_file.parent.name)
        except (OSError, ValueError):
            continue
        message = payload.get("message", {})
        text = (message.get("message", "") if isinstance(message, dict) else str(message)).strip()
        last = text.splitlines()[-1] if text else "failed"
        failures.append(RankFailure(node_rank * nproc + local_rank, last, any(e in text for e in ECHOES),
                                    error_file.stat().st_mtime_ns))
    return sorted(failures, key=lambda f: (f.echo, f.at_ns))


def killed_rank(agent_output: str) -> str | None:
    """'rank N was killed by Signal 9 (SIGKILL)' from torchrun's failure summary, when its root cause is a
    rank that died of a signal (such a rank writes no error file; the survivors' errors are only echoes)."""
    summary = agent_output[agent_output.rfind("Root Cause"):] if "Root Cause" in agent_output else ""
    rank = re.search(r"rank\s*:\s*(\d+)", summary)
    signal_line = re.search(r"(Signal \d+ \(\w+\))", summary)
    if rank and signal_line:
        return f"rank {rank.group(1)} was killed by {signal_line.group(1)}"
    return None


class Supervisor:
    """Runs torchrun for one run directory until the run finishes, stops, or fails past its restarts."""

    def __init__(self, run: Run, *, output: IO[str] | None = None) -> None:
        self.run = run
        self.run_dir = run.dir
        self.preset = run.preset
        self.output = output
        self.process: subprocess.Popen[str] | None = None
        self.stopping: str | None = None
        self.aborted = False  # a second Ctrl-C: the ranks were killed, not stopped
        self.agent_tail: deque[str] = deque(maxlen=200)  # torchrun's last lines, for the root cause of a failure

    @property
    def writes_run_dir(self) -> bool:
        """Whether rank 0 runs on this node (it writes events, status and checkpoints here): node 0 under static
        rendezvous; under c10d, the node whose rank 0 created events.jsonl."""
        if self.preset.distributed.rdzv_backend == "static" or self.preset.distributed.nnodes == 1:
            return self.preset.distributed.node_rank == 0
        return (self.run_dir / "events.jsonl").exists()

    def supervise(self, resume: bool) -> RunState:
        d, run = self.preset.distributed, self.run
        with run.lock(), run.heartbeat(), handling_stop_signals(self._on_signal):
            # The pid is the supervisor's (it outlives any rank); the state stays queued until rank 0 starts, so a
            # stop given while the job starts up is kept for rank 0 to obey.
            # On a node without rank 0, the node's first process starts (and ends) this directory's status
            # (engine.runs.pipeline.run_stages), after every restart too.
            run.claim(world_size=world_size(self.preset), strategy=d.strategy, node_rank=d.node_rank)
            attempt = 0
            while True:
                log_dir = self.run_dir / "torchrun" / f"attempt_{attempt}"
                returncode = self._torchrun(resume or attempt > 0, log_dir, attempt)
                state = RunState.parse(run.status().get("state"))
                if state in (RunState.FINISHED, RunState.STOPPED):
                    # Rank 0 (or this node's first process) said how the run ended; torchrun's exit status is
                    # not trusted (1 after a clean stop, and ranks can abort while exiting).
                    return state
                if self.aborted:
                    run.fail(f"aborted by a second Ctrl-C; the newest checkpoint is kept; continue with: "
                             f"minimind-studio resume {run.name}")
                    return RunState.FAILED
                if self.stopping and returncode == 0:
                    run.stopped(f"stop requested ({self.stopping})")
                    return RunState.STOPPED
                cause = self._cause(log_dir, returncode, state)
                if attempt < d.max_restarts and not self.stopping:
                    attempt += 1
                    self._event(WarningEvent(message=f"{cause.text}; relaunching ({attempt} of {d.max_restarts} restarts), "
                                                     "resuming from the newest checkpoint"))
                    run.restart(attempt)
                    continue
                if cause.own:  # rank 0's own paragraph is already the run's exit_reason and error event
                    return RunState.FAILED
                message = (f"the job failed: {cause.text}. The last checkpoint is kept; continue with: "
                           f"minimind-studio resume {run.name}")
                self._event(ErrorEvent(message=message, error_type="WorkerFailure"))
                run.fail(message)
                return RunState.FAILED

    def _torchrun(self, resume: bool, log_dir: Path, attempt: int) -> int:
        log_dir.mkdir(parents=True, exist_ok=True)
        command = torchrun_command(self.run_dir, self.preset, resume=resume, log_dir=log_dir, attempt=attempt)
        out = self.output if self.output is not None else sys.stdout
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=worker_env(self.preset), start_new_session=True, cwd=os.getcwd(),
                                        text=True, errors="replace", bufsize=1, preexec_fn=_end_with_parent)
        self.agent_tail.clear()
        try:
            assert self.process.stdout is not None
            for line in self.process.stdout:  # rank 0's log lines and torchrun's own, to train.log
                out.write(line)
                out.flush()
                self.agent_tail.append(line)
            return self.process.wait()
        finally:
            self.process = None

    def _cause(self, log_dir: Path, returncode: int, state: RunState) -> Cause:
        """The root cause of a failed attempt: a rank killed by a signal (it leaves no error file), else the first
        rank's own exception (not a survivor's echo of it), else what rank 0 recorded, else the exit status."""
        killed = killed_rank("".join(self.agent_tail))
        if killed:
            return Cause(killed)
        d = self.preset.distributed
        failures = rank_failures(log_dir, d.node_rank, resolve_nproc(d.nproc_per_node))
        status = self.run.status()
        recorded = status.get("exit_reason") if state == RunState.FAILED else None
        if failures and not failures[0].echo and failures[0].rank != 0:
            return Cause(f"rank {failures[0].rank} failed: {failures[0].message}")
        if recorded:  # rank 0 failed on its own and wrote its paragraph (a full disk, bad data ...)
            return Cause(str(recorded), own=True)
        if failures:
            return Cause(f"rank {failures[0].rank} failed: {failures[0].message}")
        return Cause(f"a worker process ended without an error report (torchrun exit status {returncode}; a rank "
                     "was probably killed, e.g. by SIGKILL or the out-of-memory killer)")

    def _event(self, event: Any) -> None:
        if not self.writes_run_dir:
            return
        log = EventLog(self.run_dir / "events.jsonl")
        try:
            log.emit(event)
        finally:
            log.close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """A stop for the whole job: control/stop, which every rank reads in its own node's run directory and
        votes on, so all end after the same step. A second Ctrl-C ends the job now, without a checkpoint."""
        if self.stopping and signum == signal.SIGINT and self.process is not None:
            self.aborted = True
            abort_job(self.process.pid)
            return
        self.stopping = signal.Signals(signum).name
        self.run.request_stop()


def abort_job(torchrun_pid: int) -> None:
    """Kill a torchrun job at once: its workers run in sessions of their own, so a signal to torchrun's group
    would reach them only after torchrun's own grace time (and they would take SIGTERM as a stop)."""
    import psutil

    try:
        workers = psutil.Process(torchrun_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for process in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(torchrun_pid, signal.SIGKILL)


@dataclass
class Cause:
    text: str
    own: bool = False  # rank 0's own failure, already recorded in the run directory


def _end_with_parent() -> None:
    """In torchrun's process, before it starts: die with the supervisor (a SIGKILLed supervisor releases the run
    lock, and a job left running would then train beside a resumed one). Linux only; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def follow_events(run_dir: Path, listeners: list[Callable[[Any], None]], done: threading.Event) -> threading.Thread:
    """Feed the events rank 0 appends to events.jsonl to in-process listeners (a foreground run's progress
    display), from the current end of the file, until `done` is set."""
    from engine.events import read_events

    path = run_dir / "events.jsonl"
    offset = path.stat().st_size if path.exists() else 0

    def loop() -> None:
        nonlocal offset
        while True:
            finished = done.is_set()
            if path.exists():
                events, offset = read_events(path, offset)
                for event in events:
                    for listener in listeners:
                        listener(event)
            if finished:
                return
            time.sleep(FOLLOW_S)

    thread = threading.Thread(target=loop, name="follow-events", daemon=True)
    thread.start()
    return thread
