"""Training on several processes through torchrun (gloo on the CPU): real torchrun jobs of 2 processes.

What these guard against: ranks that see overlapping or differently ordered data, a loss that changes
with the world size (SFT's masked tokens), FSDP diverging from DDP, a checkpoint written by two ranks
that does not resume on one (or the reverse), a killed rank that leaves the job hanging in a
collective or blames the wrong rank, and a stop that ends the ranks after different steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from engine.checkpoints.checkpoint import latest_checkpoint, read_checkpoint, verify_checkpoint
from engine.config import PROJECT_ROOT, load_preset
from engine.events import CheckpointEvent, StageEndEvent, StepEvent, iter_events
from engine.runs.launch import killed_rank, torchrun_command
from engine.runs.run_dir import create_run, read_status, request_stop
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")


def _preset(make_preset, nproc: int, *, batch: int, accumulation: int = 1, strategy: str = "ddp", steps: int = 8,
            **extra):
    return make_preset(
        stages=["tokenizer", "pretrain", "sft"], distributed={"nproc_per_node": nproc, "strategy": strategy},
        pretrain={"max_steps": steps, "batch_size": batch, "accumulation_steps": accumulation, "log_interval": 1,
                  "save_interval": 4, **extra.get("pretrain", {})},
        sft={"max_steps": 4, "batch_size": batch, "accumulation_steps": accumulation, "log_interval": 1},
    )


def _launch(run_dir: Path, *, resume: bool = False) -> subprocess.Popen:
    """What a detached run executes: `python -m engine RUN_DIR` (the torchrun supervisor for 2 processes)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "engine", str(run_dir)] + (["--resume"] if resume else [])
    return subprocess.Popen(command, env=env, stdout=open(run_dir / "train.log", "ab"), stderr=subprocess.STDOUT)


def _run(run_dir: Path, *, resume: bool = False, timeout: float = 300) -> int:
    return _launch(run_dir, resume=resume).wait(timeout=timeout)


def _losses(run_dir: Path) -> dict[tuple[str, int], float]:
    return {(e.stage, e.step): e.loss for e in iter_events(run_dir / "events.jsonl")
            if isinstance(e, StepEvent) and e.loss is not None}


def _final_weights(run_dir: Path, stage: str = "sft") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(latest_checkpoint(run_dir / "checkpoints" / stage).path / "model.safetensors"))


def _assert_same_training(a: Path, b: Path, tolerance: float) -> None:
    losses_a, losses_b = _losses(a), _losses(b)
    assert losses_a.keys() == losses_b.keys() and len(losses_a) == 12
    worst = max(abs(losses_a[k] - losses_b[k]) for k in losses_a)
    assert worst <= tolerance, f"largest loss difference {worst:.2e} over {sorted(losses_a)}"
    weights_a, weights_b = _final_weights(a), _final_weights(b)
    assert max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a) <= tolerance * 10


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory: pytest.TempPathFactory, corpus) -> dict[str, Path]:
    """One process x batch 4 (with and without accumulation): what 2 processes x batch 2 must reproduce."""
    from tests.support.presets import preset_factory

    make = preset_factory(corpus, tmp_path_factory.mktemp("reference"))
    runs = {}
    for accumulation in (1, 2):
        run_dir = create_run(_preset(make, 1, batch=4, accumulation=accumulation))
        assert _run(run_dir) == 0
        runs[f"accumulation {accumulation}"] = run_dir
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("strategy, accumulation", [("ddp", 1), ("ddp", 2), ("fsdp", 1)])
def test_two_ranks_reproduce_one_rank_with_twice_the_batch(make_preset, reference_runs, strategy, accumulation):
    """2 ranks x micro-batch 2 must train exactly as 1 rank x 4 (fp32, 1e-5), SFT's masked loss included:
    the loss is a mean over the global step's tokens, and each rank takes its half of each global batch."""
    run_dir = create_run(_preset(make_preset, 2, batch=2, accumulation=accumulation, strategy=strategy))
    assert _run(run_dir) == 0, (run_dir / "train.log").read_text()[-3000:]
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["world_size"] == 2
    steps = [e for e in iter_events(run_dir / "events.jsonl") if isinstance(e, StepEvent)]
    assert all(e.world_size == 2 and e.ranks and [r.rank for r in e.ranks] == [0, 1] for e in steps)
    _assert_same_training(reference_runs[f"accumulation {accumulation}"], run_dir, 1e-5)


@pytest.mark.slow
@pytest.mark.soak
def test_stopped_two_rank_run_resumes_on_one_and_on_two(make_preset, reference_runs, tmp_path):
    """A 2-rank run stopped through control/stop (what `minimind-studio stop` writes) resumes on 1 rank (the CLI's --nproc-per-node; the
    global batch is kept through accumulation) and on 2 ranks, each finishing exactly as the uninterrupted
    run; the checkpoint then loads in chat and export unchanged."""
    run_dir = create_run(_preset(make_preset, 2, batch=2, steps=100, pretrain={"save_interval": 1000}))
    job = _launch(run_dir)
    wait_until(lambda: any(isinstance(e, StepEvent) and e.step >= 3 for e in iter_events(run_dir / "events.jsonl")),
               timeout=240, what="the 2-rank run reaches step 3")
    request_stop(run_dir)
    assert job.wait(timeout=240) == 0
    assert read_status(run_dir)["state"] == "stopped"
    stopped_at = latest_checkpoint(run_dir / "checkpoints" / "pretrain").step
    assert 3 <= stopped_at < 100

    # the uninterrupted reference for this preset
    reference = create_run(_preset(make_preset, 2, batch=2, steps=100, pretrain={"save_interval": 1000}))
    assert _run(reference) == 0
    on_two = run_dir.parent / (run_dir.name + "-copy")
    shutil.copytree(run_dir, on_two, symlinks=True)  # `latest` stays a link
    resumed = subprocess.run([sys.executable, "-m", "studio.cli", "resume", str(run_dir), "--nproc-per-node", "1"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert load_preset(run_dir / "preset.toml").distributed.nproc_per_node == 1
    assert _run(on_two, resume=True) == 0, (on_two / "train.log").read_text()[-3000:]
    for finished in (run_dir, on_two):
        assert read_status(finished)["state"] == "finished"
        expected = _losses(reference)
        got = _losses(finished)
        assert set(expected) <= set(got) | {k for k in expected if k[0] == "pretrain" and k[1] <= stopped_at}
        worst = max(abs(got[k] - expected[k]) for k in got if k in expected)
        assert worst <= 1e-5, f"{finished.name}: {worst:.2e}"

    from engine.chat.session import ChatSession
    from engine.checkpoints.hf_export import export_hf

    final = read_checkpoint(latest_checkpoint(run_dir / "checkpoints" / "sft").path)
    verify_checkpoint(final)
    assert ChatSession(final, device="cpu").history == []
    export_hf(final, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def _rank_pids(supervisor: int) -> dict[int, int]:
    """{local rank: pid} of a job's workers, found under the supervisor by their environment."""
    found = {}
    for child in psutil.Process(supervisor).children(recursive=True):
        try:
            if "--rank" in child.cmdline():
                found[int(child.environ()["LOCAL_RANK"])] = child.pid
        except (psutil.NoSuchProcess, KeyError):
            continue
    return found


@pytest.mark.slow
@pytest.mark.soak
def test_a_rank_killed_ends_the_job_naming_it_and_the_run_resumes(make_preset):
    """SIGKILL to rank 1 mid-run: the job ends within 60 s (no hang in a collective), status `failed` names
    rank 1 and the signal (not rank 0's echo of it), the last checkpoint is intact and the run resumes."""
    run_dir = create_run(_preset(make_preset, 2, batch=2, steps=400, pretrain={"save_interval": 5}))
    job = _launch(run_dir)
    wait_until(lambda: any(isinstance(e, CheckpointEvent) for e in iter_events(run_dir / "events.jsonl")),
               timeout=240, what="a first checkpoint")
    pids = _rank_pids(job.pid)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.monotonic()
    job.wait(timeout=90)
    assert time.monotonic() - killed_at < 60
    status = read_status(run_dir)
    assert status["state"] == "failed"
    assert "rank 1" in status["exit_reason"] and "SIGKILL" in status["exit_reason"], status["exit_reason"]
    last = latest_checkpoint(run_dir / "checkpoints" / "pretrain")
    verify_checkpoint(last)
    # resume on one process, briefly
    preset = load_preset(run_dir / "preset.toml", ["distributed.nproc_per_node=1", f"pretrain.max_steps={last.step + 2}"])
    from engine.config import save_preset

    save_preset(preset, run_dir / "preset.toml")
    assert _run(run_dir, resume=True) == 0
    assert read_status(run_dir)["state"] == "finished"


@pytest.mark.slow
@pytest.mark.soak
def test_sigterm_to_the_launcher_stops_every_rank_after_the_same_step(make_preset):
    """SIGTERM to the supervisor (what `kill`, a closing terminal or a scheduler sends): every rank ends after
    the same step, one checkpoint is written at that step, and the run is `stopped`, not failed (torchrun's
    own exit status after a stop is not trusted)."""
    run_dir = create_run(_preset(make_preset, 2, batch=2, steps=400, pretrain={"save_interval": 1000}))
    job = _launch(run_dir)
    wait_until(lambda: any(isinstance(e, StepEvent) and e.stage == "pretrain" and e.step >= 2
                           for e in iter_events(run_dir / "events.jsonl")), timeout=240, what="pretrain step 2")
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 0
    assert read_status(run_dir)["state"] == "stopped"
    events = list(iter_events(run_dir / "events.jsonl"))
    saves = [e for e in events if isinstance(e, CheckpointEvent) and e.stage == "pretrain"]
    end = next(e for e in events if isinstance(e, StageEndEvent) and e.stage == "pretrain")
    assert end.state == "stopped" and len(saves) == 1 and saves[0].step == end.step


def test_torchrun_command_for_one_node_and_for_several(make_preset, tmp_path):
    """One node uses --standalone (a free port, so two runs never collide); several nodes use static ranks from
    node_rank (node 0 holds rank 0 and writes the run directory) or c10d; every node runs the same module."""
    one = torchrun_command(tmp_path, make_preset(distributed={"nproc_per_node": 2}), resume=False, log_dir=tmp_path)
    assert "--standalone" in one and "--nproc-per-node=2" in one and one[-4:] == ["-m", "engine", str(tmp_path), "--rank"]
    two = torchrun_command(tmp_path, make_preset(distributed={"nproc_per_node": 8, "nnodes": 2, "node_rank": 1,
                                                              "rdzv_endpoint": "node0.lan:29400"}),
                           resume=True, log_dir=tmp_path)
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=node0.lan", "--master-port=29400"} <= set(two)
    assert two[-1] == "--resume" and "--standalone" not in two
    elastic = torchrun_command(tmp_path, make_preset(distributed={"nnodes": 2, "rdzv_backend": "c10d"}), resume=False,
                               log_dir=tmp_path)
    assert "--rdzv-backend=c10d" in elastic and "--rdzv-endpoint=localhost:29400" in elastic


def test_killed_rank_is_read_from_torchrun_failure_summary():
    """A rank killed by a signal writes no error file; torchrun's summary names it, and that is the root cause."""
    summary = """
    Root Cause (first observed failure):
    [0]:
      time      : 2026-12-03_17:40:01
      host      : vm
      rank      : 1 (local_rank: 1)
      exitcode  : -9 (pid: 4242)
      error_file: <N/A>
      traceback : Signal 9 (SIGKILL) received by PID 4242
    """
    assert killed_rank(summary) == "rank 1 was killed by Signal 9 (SIGKILL)"
    assert killed_rank("no failure here") is None


def test_preset_rejects_a_node_rank_outside_the_nodes(make_preset):
    from engine.errors import PresetError

    with pytest.raises((PresetError, ValueError), match="node_rank 2 must be below nnodes 2"):
        make_preset(distributed={"nnodes": 2, "node_rank": 2})


def test_resume_on_a_world_that_cannot_keep_the_global_batch_is_refused(make_preset):
    """A global batch of 4 sequences cannot be split over 3 processes x batch 2: a one-paragraph PresetError."""
    from engine.errors import PresetError
    from engine.train.distributed import World
    from engine.train.stage_setup import accumulation_for

    cfg = make_preset().pretrain.model_copy(update={"batch_size": 2})
    assert accumulation_for("pretrain", cfg, World(0, 0, 1), {"global_batch": 4}) == 2
    with pytest.raises(PresetError, match="cannot make up"):
        accumulation_for("pretrain", cfg, World(0, 0, 3), {"global_batch": 4})
    assert json.dumps({"ok": True})


@pytest.mark.slow
@pytest.mark.soak
def test_max_restarts_relaunches_after_a_killed_rank_and_finishes(make_preset):
    """distributed.max_restarts = 1: a rank killed mid-run relaunches the job (a fresh torchrun, resuming from the
    newest checkpoint through the project's own resume) and the run finishes; the restart is a warning event."""
    run_dir = create_run(make_preset(
        stages=["tokenizer", "pretrain"], distributed={"nproc_per_node": 2, "max_restarts": 1},
        pretrain={"max_steps": 150, "batch_size": 2, "log_interval": 5, "save_interval": 5}))
    job = _launch(run_dir)
    wait_until(lambda: any(isinstance(e, CheckpointEvent) for e in iter_events(run_dir / "events.jsonl")),
               timeout=240, what="a first checkpoint")
    os.kill(_rank_pids(job.pid)[1], signal.SIGKILL)
    assert job.wait(timeout=300) == 0, (run_dir / "train.log").read_text()[-3000:]
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["restarts"] == 1
    events = list(iter_events(run_dir / "events.jsonl"))
    from engine.events import StageStartEvent, WarningEvent

    assert any(isinstance(e, WarningEvent) and "rank 1 was killed" in e.message and "relaunching" in e.message
               for e in events)
    assert [e.resumed for e in events if isinstance(e, StageStartEvent) and e.stage == "pretrain"] == [False, True]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.soak
def test_two_nodes_each_with_its_own_run_directory(make_preset, reference_runs):
    """Two "nodes" (two supervisors on this machine, static rendezvous on a local port, one process each, their
    own run directories): node 0 writes events, status and checkpoints; node 1 receives the tokenizer over the
    process group (no shared filesystem needed), writes no checkpoint, and ends `finished`; the training equals
    one node with two processes and one process with twice the batch."""
    endpoint = f"127.0.0.1:{_free_port()}"
    runs = []
    for node in (0, 1):
        preset = make_preset(
            name=f"node{node}", stages=["tokenizer", "pretrain", "sft"],
            distributed={"nproc_per_node": 1, "nnodes": 2, "node_rank": node, "rdzv_endpoint": endpoint},
            pretrain={"max_steps": 8, "batch_size": 2, "log_interval": 1, "save_interval": 4},
            sft={"max_steps": 4, "batch_size": 2, "log_interval": 1})
        runs.append(create_run(preset))
    jobs = [_launch(run_dir) for run_dir in runs]
    assert [job.wait(timeout=300) for job in jobs] == [0, 0], (runs[1] / "train.log").read_text()[-3000:]
    node0, node1 = runs
    assert read_status(node0)["state"] == "finished" and read_status(node1)["state"] == "finished"
    assert (node1 / "tokenizer" / "tokenizer.json").read_bytes() == (node0 / "tokenizer" / "tokenizer.json").read_bytes()
    assert not (node1 / "checkpoints").exists() and not any(iter_events(node1 / "events.jsonl"))
    _assert_same_training(reference_runs["accumulation 1"], node0, 1e-5)


@pytest.mark.slow
@pytest.mark.soak
def test_a_rank_that_raises_is_named_with_its_own_error_not_rank_0s_echo(make_preset, tmp_path):
    """Rank 1 raising inside a training step (what an out-of-memory or a bug does): the job ends `failed` and
    exit_reason names rank 1 and its exception, not rank 0's "connection closed by peer" that follows it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    shutil.copy(PROJECT_ROOT / "tests" / "support" / "fail_on_rank.py", hook / "sitecustomize.py")
    run_dir = create_run(_preset(make_preset, 2, batch=2, steps=50))
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{PROJECT_ROOT}", "OMP_NUM_THREADS": "1",
           "FAIL_RANK": "1", "FAIL_STEP": "3"}
    with open(run_dir / "train.log", "ab") as log:
        job = subprocess.Popen([sys.executable, "-m", "engine", str(run_dir)], env=env, stdout=log, stderr=subprocess.STDOUT)
    assert job.wait(timeout=240) == 1
    status = read_status(run_dir)
    assert status["state"] == "failed"
    assert "rank 1 failed: RuntimeError: injected failure on rank 1" in status["exit_reason"], status["exit_reason"]


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs: the nccl path (cuda:LOCAL_RANK, DDP device_ids, the FSDP mesh on CUDA) "
                           "runs only on a GPU box; the gloo tests above cover the same code on the CPU")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_reproduce_one_gpu_with_twice_the_batch(make_preset, strategy):
    """On 2 GPUs (nccl), 2 ranks x b train as 1 GPU x 2b, within TF32's rounding (fp32 matmuls on tensor cores)."""
    def cuda(nproc: int, batch: int, strategy: str = "ddp"):
        preset = _preset(make_preset, nproc, batch=batch, strategy=strategy)
        return preset.model_copy(update={"runtime": preset.runtime.model_copy(update={"device": "cuda"})})

    one, two = create_run(cuda(1, 4)), create_run(cuda(2, 2, strategy))
    assert _run(one) == 0 and _run(two) == 0, (two / "train.log").read_text()[-3000:]
    _assert_same_training(one, two, 2e-3)


@pytest.mark.slow
@pytest.mark.soak
def test_a_second_ctrl_c_aborts_the_job_at_once_and_leaves_no_rank_behind(make_preset):
    """Ctrl-C twice on a foreground several-process run: the first asks for a stop, the second ends every rank now
    (they run in sessions of their own, so a signal to torchrun alone would reach them only after its grace
    time); the run is `failed` saying it was aborted, and its newest checkpoint is kept."""
    run_dir = create_run(_preset(make_preset, 2, batch=2, steps=400, pretrain={"save_interval": 5}))
    job = _launch(run_dir)
    wait_until(lambda: any(isinstance(e, CheckpointEvent) for e in iter_events(run_dir / "events.jsonl")),
               timeout=240, what="a first checkpoint")
    ranks = _rank_pids(job.pid)
    job.send_signal(signal.SIGINT)
    # Two signals sent back to back reach a Python handler once: the second goes once the first was handled.
    wait_until(lambda: (run_dir / "control" / "stop").exists(), timeout=10, what="the first Ctrl-C's stop", poll_s=0.005)
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=30) == 1
    assert "aborted by a second Ctrl-C" in read_status(run_dir)["exit_reason"]
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                               for pid in ranks.values()), timeout=10, what="no rank left running")
    verify_checkpoint(latest_checkpoint(run_dir / "checkpoints" / "pretrain"))
