"""A full disk at every place a run writes: the run fails with "disk full at <file>", nothing saved before is
lost or replaced by something half-written, and `resume` finishes it, once space is freed, with the weights
of a run that never failed.

How the disk fills: for real where the machine allows it. The tests run the real CLI in a user and mount
namespace (`unshare -rm`, no root needed) on a size-limited tmpfs, and fill that filesystem right before the
chosen write (tests/support/full_disk.py says why that moment is armed rather than left to chance). So the
write fails inside the real code path (safetensors' Rust writer, numpy, the kernel's short writes), and
what the run does next (cleaning up, recording the failure, the CLI's paragraph) also meets a full disk.
A rename takes no space on tmpfs, so the publish rename gets an injected ENOSPC. Where no namespace or
tmpfs is to be had, every site falls back to an injected ENOSPC (result.json's "mode" says which ran).
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.checkpoints.checkpoint import list_checkpoints, read_checkpoint, verify_checkpoint
from engine.config import Preset, save_preset
from engine.disk_full import RESERVE_NAME, NoSpaceError, disk_full_error, writing
from engine.errors import DiskFull
from engine.events import EventLog, NoteEvent, parse_event
from engine.runs.pipeline import run_pipeline
from engine.runs.run_dir import create_run, read_status
from tests.support.full_disk import SITES
from tests.support.presets import preset_factory

FULL_DISK = Path(__file__).resolve().parents[1] / "support" / "full_disk.py"

# The file each site's paragraph must name, below the small disk.
NAMED = {
    "checkpoint model file": r"runs/[^/]+/checkpoints/pretrain/\.step_000004\.tmp-\d+/model\.safetensors",
    "checkpoint trainer file": r"runs/[^/]+/checkpoints/pretrain/\.step_000004\.tmp-\d+/trainer\.safetensors",
    "checkpoint state.json": r"runs/[^/]+/checkpoints/pretrain/\.step_000004\.tmp-\d+/state\.json",
    "checkpoint publish rename": r"runs/[^/]+/checkpoints/pretrain/step_000004",
    "latest symlink": r"runs/[^/]+/checkpoints/pretrain/latest",
    "token cache shard": r"cache/\.tmp-[0-9a-f]+-\d+/tokens\.bin",
    "token cache offsets": r"cache/\.tmp-[0-9a-f]+-\d+/offsets\.npy",
    "token cache meta": r"cache/\.tmp-[0-9a-f]+-\d+/meta\.json",
    "events.jsonl append": r"runs/[^/]+/events\.jsonl",
    "status.json": r"runs/[^/]+/status\.json",
}


def tiny(corpus: tuple[Path, Path], root: Path) -> Preset:
    """Tokenizer then 6 pretraining steps, a checkpoint every 2: the armed saves are step 4's."""
    return preset_factory(corpus, root)(stages=["tokenizer", "pretrain"], pretrain={"save_interval": 2})


@pytest.fixture(scope="session")
def small_fs_mode(tmp_path_factory: pytest.TempPathFactory) -> str:
    """"tmpfs" when this machine lets an unprivileged user mount a size-limited tmpfs in its own namespaces."""
    probe = tmp_path_factory.mktemp("tmpfs-probe")
    try:
        done = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "inject"
    return "tmpfs" if done.returncode == 0 else "inject"


@pytest.fixture(scope="module")
def uninterrupted(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run_dir = create_run(tiny(corpus, tmp_path_factory.mktemp("straight")))
    run_pipeline(run_dir)
    return load_file(str(run_dir / "checkpoints" / "pretrain" / "latest" / "model.safetensors"))


def the_run(disk: Path) -> Path:
    (run_dir,) = (disk / "runs").iterdir()
    return run_dir


def temporaries(disk: Path) -> list[str]:
    """Anything a write leaves behind while it is in flight, and the run's disk reserve."""
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*")
                  if re.search(r"\.tmp-\d+$|^\.tmp-|\.old-\d+$", p.name) or p.name == RESERVE_NAME)


def read_all_events(run_dir: Path) -> list:
    """Every line of events.jsonl as an event: a torn or foreign line fails here."""
    text = (run_dir / "events.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [parse_event(json.loads(line)) for line in text.splitlines()]


def assert_checkpoints_intact(run_dir: Path) -> int | None:
    """Every published checkpoint verifies against its recorded hashes; `latest` names one. Its step."""
    stage_dir = run_dir / "checkpoints" / "pretrain"
    for path in list_checkpoints(stage_dir):
        verify_checkpoint(read_checkpoint(path))
    if not (stage_dir / "latest").exists():
        return None
    latest = read_checkpoint(stage_dir / "latest")
    verify_checkpoint(latest)
    return latest.step


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.parametrize("site", list(SITES))
def test_a_full_disk_fails_the_run_cleanly_and_resume_finishes_it(
        site: str, small_fs_mode: str, uninterrupted: dict[str, torch.Tensor], corpus: tuple[Path, Path],
        tmp_path: Path) -> None:
    """Guards against a full disk at one write site: being reported as a bug (a traceback, exit 1) or
    without the file, hiding its own reason behind a second failure to record it, leaving status.json or
    events.jsonl unreadable (a torn line), pointing `latest` at (or trusting) a half-written checkpoint or
    token cache, keeping temporaries, or a resume that does not continue to the uninterrupted run's weights."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    preset_path = tmp_path / "tiny.toml"
    save_preset(tiny(corpus, disk), preset_path)
    config = tmp_path / "scenario.json"
    config.write_text(json.dumps({"disk": str(disk), "out": str(out), "mode": small_fs_mode, "site": site,
                                  "preset": str(preset_path), "size": "16m", "inodes": 2000}))
    command = [sys.executable, str(FULL_DISK), "scenario", str(config)]
    subprocess.run(["unshare", "-rm", *command] if small_fs_mode == "tmpfs" else command, check=True, timeout=1200)
    result = json.loads((out / "result.json").read_text())
    assert result["struck"] and result["struck"]["site"] == site, result["run"]["stderr"][-3000:]

    # Failed: one paragraph naming the file, exit status 2; the run directory says the same.
    failed = out / "failed"
    run_dir = the_run(failed)
    status = json.loads((run_dir / "status.json").read_text())
    reason = status["exit_reason"]
    assert status["state"] == "failed", status
    assert re.match(rf"disk full at {re.escape(str(disk))}/{NAMED[site]} \(no space left on device; ", reason), reason
    assert reason.endswith(f"continue with: minimind-studio resume {run_dir.name}")
    assert result["run"]["rc"] == 2, result["run"]["stderr"][-3000:]
    squeezed = re.sub(r"\s", "", result["run"]["stderr"])  # the console wraps the paragraph; nothing else is printed
    assert squeezed == "error:" + re.sub(r"\s", "", reason)
    events = read_all_events(run_dir)
    assert events[-1].kind == "error" and events[-1].message == reason and events[-1].error_type == "DiskFull"
    assert not (run_dir / "traceback.txt").exists()  # not a bug
    latest = assert_checkpoints_intact(run_dir)
    if site.startswith(("checkpoint", "latest")):
        assert latest == 2  # the checkpoint before the one whose save failed
    cache = failed / "cache"
    published = [key for key in cache.iterdir() if key.is_dir() and not key.name.startswith(".")]
    assert all((key / "meta.json").is_file() for key in published), "a token cache folder without its meta.json"
    # Left for the next save to remove: a checkpoint folder whose own writing failed.
    assert all(re.fullmatch(r"runs/[^/]+/checkpoints/pretrain/\.step_000004\.tmp-\d+", t) for t in temporaries(failed))

    # Space freed: resume finishes, with the weights of a run that never failed.
    assert result["resume"]["rc"] == 0, result["resume"]["stderr"][-3000:]
    resumed = out / "resumed"
    run_dir = the_run(resumed)
    assert read_status(run_dir)["state"] == "finished"
    assert assert_checkpoints_intact(run_dir) == 6
    assert [e.kind for e in read_all_events(run_dir)].count("error") == 1
    assert temporaries(resumed) == []
    weights = load_file(str(run_dir / "checkpoints" / "pretrain" / "latest" / "model.safetensors"))
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights)


def test_disk_full_is_recognised_in_every_shape_and_names_the_file(tmp_path: Path) -> None:
    """Guards against a full disk read as a bug because it came as a library's own exception (safetensors'
    "(os error 28)"), as a quota (EDQUOT), deep in an exception chain or without a file name, and against a
    later failure (closing a log on the same disk) replacing the paragraph already made."""
    target = tmp_path / "model.safetensors"
    for raised in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
                   SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")):
        with pytest.raises(NoSpaceError) as caught, writing(target):
            raise raised
        assert caught.value.filename == str(target) and caught.value.__cause__ is raised
        try:
            try:
                raise caught.value
            except NoSpaceError as inner:
                raise RuntimeError("while saving") from inner
        except RuntimeError as outer:
            full = disk_full_error(outer, run="20260101-000000-tiny")
        assert full is not None and str(full).startswith(f"disk full at {target} (")
        assert "free of" in str(full) and str(full).endswith("minimind-studio resume 20260101-000000-tiny")
    with pytest.raises(PermissionError), writing(target):  # other errors pass through untouched
        raise PermissionError(errno.EACCES, "Permission denied", str(target))
    assert disk_full_error(OSError(errno.EIO, "I/O error")) is None
    assert disk_full_error(SafetensorError("I/O error: Permission denied (os error 13)")) is None
    pathless = disk_full_error(OSError(errno.ENOSPC, "No space left on device"))
    assert pathless is not None and "was not reported" in str(pathless) and "run the command again" in str(pathless)

    first = DiskFull("disk full at /runs/x/status.json (...)")
    try:
        try:
            raise first
        except DiskFull:
            # closing train.log on the same disk: the first failure is only the implicit context
            raise OSError(errno.ENOSPC, "No space left on device")  # noqa: B904
    except OSError as second:
        assert disk_full_error(second) is first


def test_event_log_never_keeps_a_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against events.jsonl keeping half a line: from a write the disk had room for only part of
    (the kernel's short write, then ENOSPC), or from a crash mid-write found when a resumed run reopens the
    file (the next event would be glued onto it and both lost to every reader)."""
    import os

    path = tmp_path / "events.jsonl"
    path.write_text('{"v": 1, "t": 1.0, "kind": "note", "message": "kept"}\n{"v": 1, "t": 2.0, "ki')
    log = EventLog(path)
    assert path.read_text().endswith('"kept"}\n')  # the crash's torn line is cut off on open
    log.emit(NoteEvent(message="after the crash"))

    real_write = os.write

    def short_then_full(fd: int, data: bytes) -> int:
        if fd != log._fd:
            return real_write(fd, data)
        if len(data) > 10:
            return real_write(fd, data[:10])  # what fitted in the last block
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(NoSpaceError) as caught:
        log.emit(NoteEvent(message="no room for this one"))
    monkeypatch.undo()
    assert caught.value.filename == str(path)
    log.emit(NoteEvent(message="space freed"))
    log.close()
    lines = path.read_text().splitlines()
    assert [parse_event(json.loads(line)).message for line in lines] == ["kept", "after the crash", "space freed"]


def test_the_failure_record_never_hides_why_the_run_failed(make_preset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against the failure handler masking a full disk with its own second OSError: here not even
    the reserve helps (every later status and event write fails too), and the run must still raise the
    paragraph naming the file whose write failed, with status.json and events.jsonl as they were."""
    import engine.checkpoints.checkpoint as checkpoint
    import engine.runs.run as run_module  # the only writer of status.json
    from engine.events import EventLog as Log

    real_save, real_status, real_append = checkpoint.save_file, run_module.write_json_atomic, Log._append
    full = [False]

    def save_file(tensors, filename, metadata=None):
        if ".step_000004." in filename and filename.endswith("model.safetensors"):
            full[0] = True
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, metadata=metadata)

    def refuse_when_full(real):
        def write(*args, **kwargs):
            if full[0]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)
        return write

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    monkeypatch.setattr(run_module, "write_json_atomic", refuse_when_full(real_status))
    monkeypatch.setattr(Log, "_append", refuse_when_full(real_append))
    run_dir = create_run(make_preset(stages=["tokenizer", "pretrain"], pretrain={"save_interval": 2}))
    with pytest.raises(DiskFull, match=r"^disk full at \S+/\.step_000004\.tmp-\d+/model\.safetensors \(") as caught:
        run_pipeline(run_dir)
    assert isinstance(caught.value.__cause__, NoSpaceError)
    assert read_status(run_dir)["state"] == "running"  # the last status that could be written, intact
    last = read_all_events(run_dir)[-1]
    assert last.kind == "step" and last.step == 4  # the events written before the disk filled, intact
    assert read_checkpoint(run_dir / "checkpoints" / "pretrain" / "latest").step == 2


def test_the_cli_tells_a_full_disk_outside_a_run_as_one_paragraph(make_preset, tmp_path: Path, monkeypatch, capsys) -> None:
    """Guards against a full disk met before a run exists (creating its directory) reaching the user as a
    traceback: the CLI makes the same paragraph, exit status 2, with the advice to run the command again."""
    import engine.api.runs as runs_api
    from studio.cli import main

    preset_path = tmp_path / "tiny.toml"
    save_preset(make_preset(), preset_path)
    target = tmp_path / "runs" / "20260101-000000-unit" / "preset.toml"

    def new_run(preset):
        with writing(target):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs_api, "new_run", new_run)  # where the CLI's `run` creates the run directory
    assert main(["run", str(preset_path)]) == 2
    printed = re.sub(r"\s", "", capsys.readouterr().err)
    assert printed.startswith(re.sub(r"\s", "", f"error: disk full at {target} (no space left on device;"))
    assert printed.endswith("Freespacethere,thenrunthecommandagain.")
