"""Kill anywhere, 20 times: a real run SIGKILLed at 20 seeded moments spread over tokenizer training,
token-cache building, training steps, evals and checkpoint writes, resumed after each, ends with the
weights of a run never killed, and nothing half-built is ever trusted on the way.

Each kill is drawn from the seed as a phase, a point inside it (tests/support/kill_points.py: where the
run is parked for the kill, e.g. half of trainer.safetensors written, a cache's tokens written but not its
meta.json, an old checkpoint half-deleted) and, inside a training stage, a step. Every point gets a kill
(so every phase at least two); the rest are drawn at random. The phase a kill landed in is then read back from the disk (the
killed process's temporary folders, the newest event), not taken from the plan. After every kill: status.json
parses and the run shows as crashed, events.jsonl holds whole events (a torn last line only if the reader
skips it), every checkpoint listed verifies against its recorded hashes, `latest` names one of them, no
token-cache folder lacks its meta.json, the tokenizer folder is whole or absent. At the end: the losses of
every step (re-done ones too), the token caches, the tokenizer and the final weights of both stages equal
an uninterrupted run's, bit for bit on the CPU.

MINIMIND_KILL_SEED=<n> draws another plan (the table printed with -s says what each kill did).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from engine.checkpoints.checkpoint import list_checkpoints, read_checkpoint, verify_checkpoint
from engine.config import PROJECT_ROOT, Preset
from engine.data.token_cache import TokenCache
from engine.events import parse_event, read_events
from engine.runs.run_dir import create_run, effective_state, read_status
from engine.runs.state import RunState
from tests.support.corpus import write_corpus
from tests.support.kill_points import KEEPS, POINTS
from tests.support.presets import preset_factory
from tests.support.runs_cli import cli
from tests.support.wait import wait_until

KILL_POINTS = Path(__file__).resolve().parents[1] / "support" / "kill_points.py"
SEED = int(os.environ.get("MINIMIND_KILL_SEED", "2026"))
KILLS = 20
PHASES = tuple(POINTS)  # tokenizer, cache, step, eval, checkpoint
TRAINING = ("step", "eval", "checkpoint")
STEPS = {"pretrain": 12, "sft": 8}
EVAL_EVERY, SAVE_EVERY, KEEP = 2, 3, 1
TOKENIZER_RECORDS = 2700  # below what the tokenizer trains on (3,000 documents less 20 held out)

pytestmark = [pytest.mark.slow, pytest.mark.soak]


@dataclass
class Kill:
    phase: str
    point: str
    stage: str  # tokenizer | pretrain | sft
    at: int  # the step (training stages) or records read (tokenizer/reading) from which the point is armed
    note: dict[str, Any] = field(default_factory=dict)  # what the parked run said
    observed: str = ""  # the phase read back from the disk
    left: str = ""  # what the kill left half-done, as found right after it
    launched: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.phase}/{self.point}"


def kill_plan(seed: int, n: int = KILLS) -> list[Kill]:
    """n kills in an order the run can meet them: the tokenizer's, then for pretrain and for sft the cache
    build's, then steps, evals and saves at sorted steps. Every point of POINTS gets a kill (so every phase at
    least two); the other kills, the split between stages and the steps are drawn from the seed. A point that
    keeps its phase's work (KEEPS) comes where no later kill needs that phase of that stage again."""
    rng = random.Random(seed)
    every = [f"{phase}/{point}" for phase, points in POINTS.items() for point in points]
    names = every + [rng.choice([name for name in every if name not in KEEPS]) for _ in range(n - len(every))]
    rng.shuffle(names)
    of = {phase: [name.split("/")[1] for name in names if name.startswith(f"{phase}/")] for phase in PHASES}
    plan = [Kill("tokenizer", point, "tokenizer", rng.randrange(1, TOKENIZER_RECORDS))
            for point in sorted(of["tokenizer"], key=lambda point: f"tokenizer/{point}" in KEEPS)]  # published last
    training = [name for name in names if name.split("/")[0] in TRAINING]
    cut_cache, cut_training = rng.randint(1, len(of["cache"]) - 1), rng.randint(1, len(training) - 1)
    for stage, caches, trains in (("pretrain", of["cache"][:cut_cache], training[:cut_training]),
                                  ("sft", of["cache"][cut_cache:], training[cut_training:])):
        plan += [Kill("cache", point, stage, 0) for point in caches]
        steps = sorted(rng.randint(1, STEPS[stage]) for _ in trains)
        kills = [Kill(*name.split("/"), stage, at) for name, at in zip(trains, steps)]  # type: ignore[call-arg]
        for kill in kills[:-1]:
            if kill.name in KEEPS and occurrence(kill.phase, stage, kill.at) == STEPS[stage]:
                last = kills[-1]  # kept at the stage's last save, it would end the stage: it goes last instead
                (kill.phase, kill.point), (last.phase, last.point) = (last.phase, last.point), (kill.phase, kill.point)
        plan += kills
    return plan


def occurrence(phase: str, stage: str, at: int) -> int:
    """The first step >= at where the phase happens (every step; evals and saves at their intervals and the last)."""
    every = {"step": 1, "eval": EVAL_EVERY, "checkpoint": SAVE_EVERY}[phase]
    return min(-(-at // every) * every, STEPS[stage])


def preset(corpus: tuple[Path, Path], root: Path) -> Preset:
    """The tiny model on 3,000 documents and 1,500 dialogues (each token cache is several write batches), with an
    eval every 2 steps and a save every 3, keeping 1 (so every save but a stage's first prunes one)."""
    train = {"eval_interval": EVAL_EVERY, "save_interval": SAVE_EVERY, "keep_checkpoints": KEEP}
    return preset_factory(corpus, root)(runtime={"data_workers": 1},
                                        pretrain={"max_steps": STEPS["pretrain"], **train},
                                        sft={"max_steps": STEPS["sft"], **train})


def start(run_dir: Path, *args: str) -> subprocess.Popen:
    """What launch_detached starts (own session, stdin closed, output to train.log): `python -m engine RUN_DIR`,
    or with args starting with the driver, the driver."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, *(args if args and args[0] == str(KILL_POINTS) else ("-m", "engine", str(run_dir), *args))]
    with open(run_dir / "train.log", "ab") as log:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=PROJECT_ROOT, start_new_session=True)


def events_since(run_dir: Path, t: float) -> list[Any]:
    return [e for e in read_events(run_dir / "events.jsonl")[0] if e.t >= t]


def observed_phase(run_dir: Path, cache_dir: Path, kill: Kill, pid: int) -> str:
    """The phase the killed process was in, from what it left: its temporary folders, a checkpoint it published
    but never announced, the newest event it wrote."""
    checkpoints = run_dir / "checkpoints"
    mine = events_since(run_dir, kill.launched)
    announced = {(e.stage, e.step) for e in mine if e.kind == "checkpoint"}
    if any(checkpoints.glob(f"*/.step_*.tmp-{pid}")):
        return "checkpoint"
    for folder in checkpoints.glob("*/step_*"):
        state = json.loads((folder / "state.json").read_text()) if (folder / "state.json").is_file() else None
        if state and state["saved_at"] >= kill.launched and (state["stage"], state["step"]) not in announced:
            return "checkpoint"  # published (and `latest` perhaps moved), the checkpoint event not yet written
    if (run_dir / f".tokenizer.tmp-{pid}").exists() or (mine and mine[-1].kind == "stage_start" and mine[-1].stage == "tokenizer"):
        return "tokenizer"
    if any(cache_dir.glob(f".tmp-*-{pid}")):
        return "cache"
    newest = [e for e in mine if e.kind in ("stage_start", "step", "eval", "sample", "checkpoint")][-1]
    if newest.kind == "eval" or (newest.kind == "step" and occurrence("eval", newest.stage, newest.step) == newest.step):
        return "eval"  # a step event of an eval step is followed by the eval: the held-out loss is being measured
    return "step"


def check_after_kill(run_dir: Path, cache_dir: Path) -> list[str]:
    """Everything a resume, the studio or chat could read must be whole. Returns notes for the table."""
    notes = []
    status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))  # a JSONDecodeError fails the test
    assert effective_state(status) == RunState.CRASHED, status
    raw = (run_dir / "events.jsonl").read_bytes()
    lines = raw.split(b"\n")
    for line in lines[:-1]:
        parse_event(json.loads(line))
    if lines[-1]:
        notes.append("torn last event line")
        assert len(read_events(run_dir / "events.jsonl")[0]) == len(lines) - 1  # the reader skips it
    for stage_dir in sorted((run_dir / "checkpoints").glob("*")):
        listed = list_checkpoints(stage_dir)
        for path in listed:
            verify_checkpoint(read_checkpoint(path))  # listed = complete, with the files it recorded
        visible = {p for p in stage_dir.glob("step_*") if not p.is_symlink()}
        assert visible == set(listed), f"not a complete checkpoint: {sorted(p.name for p in visible - set(listed))}"
        link = stage_dir / "latest"
        if link.is_symlink():
            assert link.resolve() in [p.resolve() for p in list_checkpoints(stage_dir)], f"{link} -> {os.readlink(link)}"
    for folder in published_caches(cache_dir):
        cache = TokenCache(folder)  # needs meta.json, and the token file as long as it says
        assert (folder / "tokens.bin").stat().st_size == cache.n_tokens * cache.tokens.dtype.itemsize
    tokenizer = run_dir / "tokenizer"
    if tokenizer.exists():
        json.loads((tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
        json.loads((tokenizer / "tokenizer_config.json").read_text(encoding="utf-8"))
    return notes


def published_caches(cache_dir: Path) -> list[Path]:
    """The folders a run would open: hidden ones (.tmp-*) are builds in progress, never opened."""
    return sorted(p for p in cache_dir.glob("*") if p.is_dir() and not p.name.startswith(".")) if cache_dir.is_dir() else []


def left_on_disk(run_dir: Path, kill: Kill) -> str:
    note = kill.note
    if "written" in note:
        return f"{Path(note['tmp']).name}: {kill.point.split()[0]}.safetensors {note['written']:,} of {note['size']:,} bytes"
    if "pruning" in note:
        what = f"{Path(note['pruning']).name} half-deleted ({', '.join(note['removed'])} gone)" if note["pruning"] else "nothing to prune"
        return f"latest -> {os.readlink(run_dir / 'checkpoints' / kill.stage / 'latest')}, {what}"
    if "published" in note:
        if kill.phase == "tokenizer":
            return "tokenizer/ published, stage_end not written"
        latest = run_dir / "checkpoints" / kill.stage / "latest"
        return f"{Path(note['published']).name} published, latest -> {os.readlink(latest) if latest.is_symlink() else 'none'}"
    if "tmp" in note:
        what = {"tokenizing": f"{note.get('docs', 0):,} documents written, more to come", "tokens written": "no meta.json",
                "publishing": "complete, not renamed", "writing": "tokenizer.json only", "state.json": "half a state.json"}
        return f"{Path(note['tmp']).name}: {what.get(kill.point, kill.point)}"
    if "records_read" in note:
        return f"BPE training, {note['records_read']:,} records read"
    latest = run_dir / "checkpoints" / kill.stage / "latest"
    return f"latest -> {os.readlink(latest)}" if latest.is_symlink() else "no checkpoint yet"


def outcome(events: list[Any]) -> str:
    """What the next process did about the kill: the work it did again, where it resumed."""
    said = []
    for event in events:
        if event.kind == "stage_start" and event.stage == "tokenizer":
            said.append("tokenizer trained")
        elif event.kind == "cache_progress":
            said.append(f"{event.stage} cache built")
        elif event.kind == "stage_start":
            said.append(f"{event.stage} from step {event.start_step}")
        elif event.kind == "warning":
            said.append(f"warning: {event.message}")
    return "; ".join(dict.fromkeys(said)) or "-"


def kill_once(run_dir: Path, cache_dir: Path, kill: Kill, marker: Path, *, resume: bool) -> None:
    """Start the run parked at the kill's point, SIGKILL it there, read back where it was and check what it left."""
    saved_before = [d for d in (run_dir / "checkpoints").glob("*") if list_checkpoints(d)]
    kill.launched = time.time()
    process = start(run_dir, str(KILL_POINTS), str(run_dir), str(marker), kill.name, kill.stage, str(kill.at),
                    *(["--resume"] if resume else []))
    try:
        wait_until(lambda: marker.exists() or process.poll() is not None, timeout=180,
                   what=f"the run to reach {kill.name}", poll_s=0.05)
        assert marker.exists(), f"the run ended (status {process.returncode}) before reaching {kill.name}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()  # reaped: a zombie would still look alive
    kill.note = json.loads(marker.read_text())
    assert kill.note["pid"] == process.pid
    kill.observed = observed_phase(run_dir, cache_dir, kill, process.pid)
    kill.left = "; ".join([left_on_disk(run_dir, kill), *check_after_kill(run_dir, cache_dir)])
    for stage_dir in saved_before:  # a stage's first save killed before `latest` was made: the resume made it
        assert (stage_dir / "latest").is_symlink(), f"{stage_dir} has checkpoints but no latest after a resume"


def weights(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / stage / "latest" / "model.safetensors"))


def test_kill_anywhere_twenty_times_then_the_weights_of_a_run_never_killed(tmp_path: Path) -> None:
    """Guards against a kill -9 anywhere leaving something a resume trusts half-built (a tokenizer, a token
    cache without its meta.json, a checkpoint whose files are cut short, `latest` naming an incomplete or
    half-pruned checkpoint), a status or events file that no longer parses, a run that cannot be resumed,
    and a resumed run whose losses or weights drift from a run that was never killed."""
    started = time.monotonic()
    corpus = write_corpus(tmp_path / "corpus", n_docs=3000, n_dialogues=1500)
    reference = create_run(preset(corpus, tmp_path / "straight"))
    straight = start(reference)  # trains alongside the kills: it shares nothing with them but the corpus
    killed_root = tmp_path / "killed"
    run_dir, cache_dir = create_run(preset(corpus, killed_root)), killed_root / "cache"
    plan = kill_plan(SEED)
    try:
        for k, kill in enumerate(plan, 1):
            kill_once(run_dir, cache_dir, kill, tmp_path / f"kill-{k:02d}.json", resume=k > 1)
        resumed = time.time()
        done = cli("resume", run_dir.name, "--detach", "--out-dir", str(run_dir.parent))  # as a user would
        assert done.returncode == 0, done.stderr
        wait_until(lambda: not effective_state(read_status(run_dir)).live, timeout=300, what="the last resume to end")
        assert straight.wait(timeout=300) == 0
    finally:
        if straight.poll() is None:
            straight.kill()

    rows = []
    launches = [kill.launched for kill in plan] + [resumed, float("inf")]
    for k, kill in enumerate(plan):
        after = [e for e in events_since(run_dir, launches[k + 1]) if e.t < launches[k + 2]]
        rows.append(f"| {k + 1} | {kill.name} | {kill.stage} | {kill.note['step'] if kill.stage != 'tokenizer' else '-'} "
                    f"| {kill.observed} | {kill.left} | {outcome(after)} |")
    minutes = (time.monotonic() - started) / 60
    table = "\n".join([f"seed {SEED}: {KILLS} kills, {minutes:.1f} min",
                       "| # | phase/point | stage | step | landed in | left on disk | next run |",
                       "| --- | --- | --- | --- | --- | --- | --- |", *rows])
    print("\n" + table)

    assert all(kill.observed == kill.phase for kill in plan), [(k.name, k.observed) for k in plan]
    assert min(Counter(kill.observed for kill in plan)[p] for p in PHASES) >= 2
    assert {kill.name for kill in plan} == {f"{phase}/{point}" for phase in POINTS for point in POINTS[phase]}
    status = read_status(run_dir)
    assert status["state"] == RunState.FINISHED, status.get("exit_reason")
    assert status["stages_done"] == ["pretrain", "sft", "tokenizer"]

    # Every step the killed run took, re-done ones included, had the uninterrupted run's loss and eval loss.
    def losses(path: Path, kind: str) -> dict[tuple[str, int], float | None]:
        return {(e.stage, e.step): getattr(e, "loss" if kind == "step" else "eval_loss")
                for e in read_events(path / "events.jsonl")[0] if e.kind == kind}

    for kind in ("step", "eval"):
        expected = losses(reference, kind)
        seen = [(e.stage, e.step, getattr(e, "loss" if kind == "step" else "eval_loss"))
                for e in read_events(run_dir / "events.jsonl")[0] if e.kind == kind]
        assert {(stage, step) for stage, step, _ in seen} == set(expected)
        assert all(value == expected[(stage, step)] for stage, step, value in seen)
    # What was built again after kills is what a build never killed made.
    assert (run_dir / "tokenizer" / "tokenizer.json").read_bytes() == (reference / "tokenizer" / "tokenizer.json").read_bytes()
    caches = [p.name for p in published_caches(cache_dir)]
    assert caches == [p.name for p in published_caches(tmp_path / "straight" / "cache")]
    for name in caches:
        for file in ("tokens.bin", "offsets.npy"):
            assert (cache_dir / name / file).read_bytes() == (tmp_path / "straight" / "cache" / name / file).read_bytes()
    assert not list(cache_dir.glob(".tmp-*")), "a half-built cache folder was left behind"
    for stage_dir in (run_dir / "checkpoints").glob("*"):  # temporaries, replaced and pruned folders: all removed
        assert {p.name for p in stage_dir.iterdir()} == {"latest", *(p.name for p in list_checkpoints(stage_dir))}
    assert not list(run_dir.glob(".tokenizer.tmp-*")), "a half-written tokenizer was left behind"
    for stage in ("pretrain", "sft"):
        mine, theirs = weights(run_dir, stage), weights(reference, stage)
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[name], theirs[name]) for name in mine), f"{stage}: weights differ"
