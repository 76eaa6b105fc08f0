"""Two runs needing the same token cache at once, with real processes: one builds, the other waits and reuses
it, and a builder killed half-way blocks nobody and leaves nothing that is trusted.

The builders are tests/support/cache_builder.py, which builds the cache as a run's pretrain stage does and
can stall inside the build (after the token file is written, before the cache is published), so the second
process arrives mid-build for certain, not by luck."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import PROJECT_ROOT, save_preset
from engine.data.token_cache import build_token_cache
from engine.events import iter_events
from tests.support.presets import preset_factory
from tests.support.wait import wait_until

BUILDER = Path(__file__).resolve().parents[1] / "support" / "cache_builder.py"
WAITING = "waiting for another process"


class Builder:
    """One cache_builder.py process and its files."""

    def __init__(self, tmp_path: Path, name: str, preset: Path, tokenizer: Path, stall: bool = False) -> None:
        self.events, self.report = tmp_path / f"{name}.events.jsonl", tmp_path / f"{name}.json"
        self.marker, self.go = tmp_path / f"{name}.stalled", tmp_path / f"{name}.go"
        args = [str(preset), str(tokenizer), str(self.events), str(self.report)]
        args += [str(self.marker), str(self.go)] if stall else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.log = open(tmp_path / f"{name}.log", "wb")
        self.process = subprocess.Popen([sys.executable, str(BUILDER), *args], stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env, cwd=PROJECT_ROOT)

    def stalled_tmp(self) -> Path:
        """Wait until the build holds its whole token file, unpublished; its temporary folder."""
        wait_until(lambda: self.marker.exists() or self.process.poll() is not None, timeout=60, what="the build to stall")
        assert self.process.poll() is None, self.output()
        return Path(json.loads(self.marker.read_text())["tmp"])

    def notes(self) -> list[str]:
        if not self.events.exists():
            return []
        return [e.message for e in iter_events(self.events) if e.kind == "note"]

    def finish(self) -> dict:
        assert self.process.wait(timeout=60) == 0, self.output()
        self.log.close()
        return json.loads(self.report.read_text())

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")


@pytest.fixture
def setup(corpus, builtin_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(preset file, tokenizer, the cache folder the builders share)."""
    preset = preset_factory(corpus, tmp_path)()
    save_preset(preset, tmp_path / "p.toml")
    return tmp_path / "p.toml", builtin_dir, Path(preset.runtime.cache_dir)


def assert_one_good_cache(cache_dir: Path, built: dict, corpus, tokenizer: Path, tmp_path: Path) -> None:
    """The folder holds one published cache (and the lock's file), no temporary one, and it equals a build made alone."""
    alone = build_token_cache(corpus[0], tokenizer, "pretrain", tmp_path / "alone", workers=1)
    final = Path(built["dir"])
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([final.name, f".lock-{final.name}"])
    for name in ("tokens.bin", "offsets.npy"):
        assert (final / name).read_bytes() == (alone.dir / name).read_bytes()
    assert built["meta"]["n_tokens"] == alone.n_tokens


@pytest.mark.slow
def test_a_second_build_of_the_same_cache_waits_for_the_first_and_reuses_it(setup, corpus, tmp_path: Path) -> None:
    """Guards against two runs on one cache folder tokenizing the same file at once (on a big file, minutes of
    work done twice, and then one publish thrown away) and against the second trusting a half-built folder:
    the second says it waits and for whom (a note event), waits, then opens the first's cache."""
    preset, tokenizer, cache_dir = setup
    first = Builder(tmp_path, "first", preset, tokenizer, stall=True)
    first.stalled_tmp()
    second = Builder(tmp_path, "second", preset, tokenizer)
    notes = wait_until(second.notes, timeout=60, what="the second build to say it waits")
    assert WAITING in notes[0] and f"(pid {first.process.pid})" in notes[0] and str(cache_dir) in notes[0]
    assert second.process.poll() is None and not second.report.exists()  # it waits: it took nothing half-built

    first.go.touch()
    built, reused = first.finish(), second.finish()
    assert built["from_cache"] is False and reused["from_cache"] is True and reused["dir"] == built["dir"]
    assert reused["meta"]["build_seconds"] == built["meta"]["build_seconds"]  # one build: the first's
    assert len(second.notes()) == 1 and not first.notes()
    assert_one_good_cache(cache_dir, built, corpus, tokenizer, tmp_path)


@pytest.mark.slow
def test_a_builder_killed_half_way_blocks_nobody_and_its_folder_is_never_trusted(setup, corpus, tmp_path: Path) -> None:
    """Guards against the lock of a builder killed with -9 (a crash, an OOM kill) making the next run wait
    forever, and against its half-built folder being used or left behind: the waiting process takes over,
    builds the cache itself, removes the dead builder's temporary folder, and ends with the same cache as a
    build made alone."""
    preset, tokenizer, cache_dir = setup
    first = Builder(tmp_path, "first", preset, tokenizer, stall=True)
    torn = first.stalled_tmp()
    second = Builder(tmp_path, "second", preset, tokenizer)
    wait_until(second.notes, timeout=60, what="the second build to wait")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    first.log.close()

    built = second.finish()
    assert built["from_cache"] is False  # it built the cache itself, after the kill
    assert not torn.exists()
    assert_one_good_cache(cache_dir, built, corpus, tokenizer, tmp_path)


@pytest.mark.slow
def test_a_run_waiting_for_someone_elses_build_stops_when_asked(setup, corpus, builtin_dir: Path, tmp_path: Path) -> None:
    """Guards against a stop that waits for another process's tokenization (minutes on a big file): a run waiting
    on the cache lock gives the wait up at a stop and ends `stopped`, and its resume later uses the finished cache."""
    import threading

    from engine.runs.pipeline import run_pipeline
    from engine.runs.run_dir import create_run, read_status, request_stop

    preset_file, tokenizer, cache_dir = setup
    first = Builder(tmp_path, "first", preset_file, tokenizer, stall=True)
    first.stalled_tmp()
    run_dir = create_run(preset_factory(corpus, tmp_path)(
        stages=["pretrain"], model={"vocab_size": 512}, tokenizer={"from_dir": str(builtin_dir)}))

    def stop_when_waiting(event) -> None:
        if event.kind == "note" and WAITING in event.message:
            request_stop(run_dir)

    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_pipeline(run_dir, listeners=[stop_when_waiting])),
                              daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "the run kept waiting for the other build after its stop"
    assert outcome["result"].state == "stopped" and read_status(run_dir)["state"] == "stopped"
    first.go.touch()
    first.finish()
    assert run_pipeline(run_dir, resume=True).state == "finished"
    starts = [e for e in iter_events(run_dir / "events.jsonl") if e.kind == "stage_start"]
    assert starts[-1].from_cache
