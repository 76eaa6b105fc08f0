"""Running a preset on several processes: torchrun under a supervisor that owns the run directory's lifetime.

A run whose world is one process trains in the calling process (engine/runs/pipeline.py), exactly as
always. A larger world is started as

    supervisor (this module: run lock, heartbeat, status pid, signals, restarts)
      └── torchrun (torch.distributed.run: rendezvous, one worker per GPU, teardown when one fails)
            └── python -m engine.runs.ranks RUN_DIR   (every rank; rank 0 writes the run directory)

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

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from engine.config import PROJECT_ROOT, DistributedConfig, Preset, load_preset
from engine.events import ErrorEvent, EventLog, WarningEvent
from engine.runs.run_dir import Heartbeat, RunLock, claim_status, read_status, request_stop, write_status
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
    for stage in ("pretrain", "sft"):
        cfg = old.stage(stage)
        global_batch, per_micro = cfg.batch_size * cfg.accumulation_steps * old_world, cfg.batch_size * new_world
        if global_batch % per_micro == 0 and global_batch // per_micro != cfg.accumulation_steps:
            updates[stage] = cfg.model_copy(update={"accumulation_steps": global_batch // per_micro})
            notes.append(f"{stage}: accumulation_steps {cfg.accumulation_steps} -> {global_batch // per_micro} keeps "
                         f"{global_batch} sequences per step on {new_world} process(es)")
    return new.model_copy(update=updates), notes


def torchrun_command(run_dir: Path, preset: Preset, *, resume: bool, log_dir: Path) -> list[str]:
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
                    f"--rdzv-id=minimind-{preset.name}"]
    command += ["-m", "engine.runs.ranks", str(run_dir)] + (["--resume"] if resume else [])
    return command


def worker_env(preset: Preset) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    if "OMP_NUM_THREADS" not in os.environ:
        # CPU processes share the cores instead of each spinning up a thread per core (torchrun would set 1).
        per_node = resolve_nproc(preset.distributed.nproc_per_node)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_node))
    return env


def root_cause(log_dir: Path) -> str | None:
    """The first failure torchrun recorded for this attempt: 'rank N: <ExceptionType>: message', or for a rank
    killed by a signal 'rank N was killed by SIGKILL'. None when no rank failed."""
    failures: list[tuple[float, str]] = []
    for error_file in log_dir.rglob("error.json"):
        try:
            payload = json.loads(error_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        message = payload.get("message", {})
        text = message.get("message", "") if isinstance(message, dict) else str(message)
        stamp = float((message.get("extraInfo", {}) if isinstance(message, dict) else {}).get("timestamp", 0) or 0)
        rank = _rank_of(error_file)
        failures.append((stamp, f"rank {rank}: {text.strip().splitlines()[-1] if text.strip() else 'failed'}"))
    if failures:
        return sorted(failures)[0][1]
    return None


def killed_rank(agent_output: str) -> str | None:
    """'rank N was killed by Signal 9 (SIGKILL)' from torchrun's failure summary, when its root cause is a
    rank that died of a signal (such a rank writes no error file; the survivors' errors are only echoes)."""
    summary = agent_output[agent_output.rfind("Root Cause"):] if "Root Cause" in agent_output else ""
    rank = re.search(r"rank\s*:\s*(\d+)", summary)
    signal_line = re.search(r"(Signal \d+ \(\w+\))", summary)
    if rank and signal_line:
        return f"rank {rank.group(1)} was killed by {signal_line.group(1)}"
    return None


def _rank_of(error_file: Path) -> str:
    # torchrun's layout: <log_dir>/<run id>/attempt_<n>/<local rank>/error.json
    return error_file.parent.name


class Supervisor:
    """Runs torchrun for one run directory until the run finishes, stops, or fails past its restarts."""

    def __init__(self, run_dir: Path, *, output: IO[str] | None = None) -> None:
        self.run_dir = run_dir
        self.preset = load_preset(run_dir / "preset.toml")
        self.output = output
        self.process: subprocess.Popen[str] | None = None
        self.stopping: str | None = None
        self.agent_tail: list[str] = []  # torchrun's last lines of output, for the root cause of a failure

    @property
    def writes_run_dir(self) -> bool:
        """Node 0 holds global rank 0, which writes events, status and checkpoints (static rendezvous)."""
        return self.preset.distributed.node_rank == 0

    def run(self, resume: bool) -> RunState:
        d = self.preset.distributed
        with RunLock(self.run_dir), Heartbeat(self.run_dir), self._handling_signals():
            claim_status(self.run_dir, state=RunState.RUNNING, exit_reason=None, world_size=world_size(self.preset),
                         strategy=d.strategy, node_rank=d.node_rank)
            attempt = 0
            while True:
                log_dir = self.run_dir / "torchrun" / f"attempt_{attempt}"
                returncode = self._torchrun(resume or attempt > 0, log_dir)
                state = RunState.parse(read_status(self.run_dir).get("state"))
                if returncode == 0 and state in (RunState.FINISHED, RunState.STOPPED):
                    return state
                if returncode == 0 and not self.writes_run_dir:
                    write_status(self.run_dir, state=RunState.FINISHED, exit_reason="this node's ranks are done")
                    return RunState.FINISHED
                if state == RunState.STOPPED or (self.stopping and returncode == 0):
                    return RunState.STOPPED
                cause = self._cause(log_dir, returncode, state)
                if attempt < d.max_restarts and not self.stopping:
                    attempt += 1
                    self._event(WarningEvent(message=f"{cause}; relaunching ({attempt} of {d.max_restarts} restarts), "
                                                     "resuming from the newest checkpoint"))
                    write_status(self.run_dir, state=RunState.RUNNING, exit_reason=None, restarts=attempt)
                    continue
                message = f"the job failed: {cause}. The last checkpoint is kept; continue with: minimind-studio resume {self.run_dir.name}"
                self._event(ErrorEvent(message=message, error_type="WorkerFailure"))
                write_status(self.run_dir, state=RunState.FAILED, exit_reason=message)
                return RunState.FAILED

    def _torchrun(self, resume: bool, log_dir: Path) -> int:
        log_dir.mkdir(parents=True, exist_ok=True)
        command = torchrun_command(self.run_dir, self.preset, resume=resume, log_dir=log_dir)
        out = self.output if self.output is not None else sys.stdout
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=worker_env(self.preset), start_new_session=True, cwd=os.getcwd(),
                                        text=True, errors="replace", bufsize=1)
        self.agent_tail = []
        try:
            assert self.process.stdout is not None
            for line in self.process.stdout:  # rank 0's log lines and torchrun's own, to train.log
                out.write(line)
                out.flush()
                self.agent_tail = (self.agent_tail + [line])[-200:]
            return self.process.wait()
        finally:
            self.process = None

    def _cause(self, log_dir: Path, returncode: int, state: RunState) -> str:
        """The root cause of a failed attempt: a rank's own error first, then what rank 0 recorded, then the
        exit status (a rank killed by a signal leaves no error file)."""
        found = killed_rank("".join(self.agent_tail)) or root_cause(log_dir)
        if found:
            return found
        status = read_status(self.run_dir)
        if state == RunState.FAILED and status.get("exit_reason"):
            return str(status["exit_reason"])
        return (f"a worker process ended without an error report (torchrun exit status {returncode}; a rank was "
                "probably killed, e.g. by SIGKILL or the out-of-memory killer)")

    def _event(self, event: Any) -> None:
        if not self.writes_run_dir:
            return
        log = EventLog(self.run_dir / "events.jsonl")
        try:
            log.emit(event)
        finally:
            log.close()

    def _handling_signals(self) -> Any:
        supervisor = self

        class _Signals:
            def __enter__(self) -> None:
                if threading.current_thread() is not threading.main_thread():
                    self.previous: dict[int, Any] = {}
                    return
                self.previous = {sig: signal.signal(sig, supervisor._on_signal)
                                 for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

            def __exit__(self, *exc: Any) -> None:
                for sig, old in self.previous.items():
                    signal.signal(sig, old)

        return _Signals()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """A stop for the whole job: rank 0 reads control/stop, every rank ends after the same step. A second
        Ctrl-C ends the workers now (torchrun tears them down)."""
        name = signal.Signals(signum).name
        if self.stopping and signum == signal.SIGINT and self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            return
        self.stopping = name
        if self.writes_run_dir:
            request_stop(self.run_dir)
        elif self.process is not None:  # another node: its ranks take the signal and vote to stop
            os.killpg(self.process.pid, signal.SIGTERM)


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
