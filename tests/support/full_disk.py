"""A run whose disk fills up at one chosen write site, then gets its space back and is resumed.

    python tests/support/full_disk.py scenario CONFIG.json
        What tests/engine/test_disk_full.py runs, under `unshare -rm` where the machine allows it (mode
        "tmpfs"): mounts a size-limited tmpfs at CONFIG's `disk` (only this process and its children see it),
        runs `minimind-studio run PRESET` through `strike` below, copies the small disk to OUT/failed, deletes
        the ballast (the user freeing space), runs `minimind-studio resume RUN`, copies the disk to
        OUT/resumed, and writes OUT/result.json (both commands' exit status and output, the strike's record).
    python tests/support/full_disk.py strike SITE MODE DISK MARKER CLI-ARGS...
        The CLI with one write site armed: right before that write, the disk is filled for real (mode "tmpfs":
        a ballast file takes every free block, or empty files every free inode), so the write itself and
        everything after it meet a full filesystem; mode "inject" (no tmpfs to be had) makes the write raise
        ENOSPC instead. MARKER records where it struck, so a test knows the fault hit the site it meant.

Why arm a site instead of starting on a nearly full disk: which write meets the end of the space would
then depend on file sizes and page rounding, and most sites would never be hit. Filling the disk at the
chosen moment makes the site certain while the failure, the cleanup and the failure record all still run
against a filesystem that really is full.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGE = 4096  # tmpfs allocates in pages: a write that stays inside its file's last page needs no space
BALLAST = ".ballast"
STEP = r"\.step_000004\.tmp-\d+"  # the second checkpoint (save_interval 2): step 2's must survive
CACHE_TMP = r"/\.tmp-[0-9a-f]+-\d+"


@dataclass(frozen=True)
class Site:
    """Where to arm: the function replaced (module, attribute), when the call is the one (its file path,
    else None), and how the disk fills ("blocks", "inodes", or "inject" where no real disk fails there)."""

    module: str
    attribute: str
    target: Callable[..., str | None]
    fill: str


def _path_arg(pattern: str) -> Callable[..., str | None]:
    def target(*args: Any, **_: Any) -> str | None:
        path = str(args[0]) if args else ""
        return path if re.search(pattern, path) else None

    return target


def _second_arg(pattern: str) -> Callable[..., str | None]:
    def target(*args: Any, **_: Any) -> str | None:
        return str(args[1]) if len(args) > 1 and re.search(pattern, str(args[1])) else None

    return target


def _after_first_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "pretrain" / "step_000002").is_dir()


def _status_target(*args: Any, **_: Any) -> str | None:
    """A status.json write by the training thread once the first checkpoint exists (not the heartbeat's)."""
    path = Path(str(args[0])) if args else Path()
    if re.fullmatch(r"\.status\.json\.tmp-\d+", path.name) and threading.current_thread() is threading.main_thread() \
            and _after_first_checkpoint(path.parent):
        return str(path)
    return None


def _event_target(log: Any, line: bytes) -> str | None:
    """An events.jsonl line, once the first checkpoint exists, that needs a new page (a line that fits in the
    last page's slack is written even on a full tmpfs)."""
    size = os.fstat(log._fd).st_size
    pages = lambda n: -(-n // PAGE)  # noqa: E731
    if _after_first_checkpoint(log.path.parent) and pages(size + len(line)) > pages(size):
        return str(log.path)
    return None


SITES = {
    "checkpoint model file": Site("engine.checkpoints.checkpoint", "save_file",
                                  _second_arg(STEP + r"/model\.safetensors$"), "blocks"),
    "checkpoint trainer file": Site("engine.checkpoints.checkpoint", "save_file",
                                    _second_arg(STEP + r"/trainer\.safetensors$"), "blocks"),
    "checkpoint state.json": Site("engine.atomic", "open", _path_arg(STEP + r"/\.state\.json\.tmp-\d+$"), "blocks"),
    # A rename takes no space on tmpfs (ext4 may need a directory block): the error is injected.
    "checkpoint publish rename": Site("os", "rename", _path_arg(r"/" + STEP + r"$"), "inject"),
    "latest symlink": Site("os", "symlink",
                           lambda src, dst, *a, **k: str(dst) if src == "step_000004" else None, "inodes"),
    "token cache shard": Site("engine.data.cache_build", "open", _path_arg(CACHE_TMP + r"/tokens\.bin$"), "blocks"),
    "token cache offsets": Site("numpy", "save", _path_arg(CACHE_TMP + r"/offsets\.npy$"), "blocks"),
    "token cache meta": Site("engine.atomic", "open", _path_arg(CACHE_TMP + r"/\.meta\.json\.tmp-\d+$"), "blocks"),
    "events.jsonl append": Site("engine.events", "EventLog._append", _event_target, "blocks"),
    "status.json": Site("engine.atomic", "open", _status_target, "blocks"),
}


def fill_blocks(disk: Path) -> None:
    """Take every free block of the filesystem with one ballast file."""
    (disk / BALLAST).mkdir(exist_ok=True)
    fd = os.open(disk / BALLAST / "blocks", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 20, PAGE):
            data = b"\xa5" * chunk
            try:
                while True:
                    os.write(fd, data)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


def fill_inodes(disk: Path) -> None:
    """Take every free inode with empty files (a symlink or a new file then fails with ENOSPC)."""
    (disk / BALLAST).mkdir(exist_ok=True)
    for n in range(1_000_000):
        try:
            os.close(os.open(disk / BALLAST / f"i{n}", os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as error:
            if error.errno == errno.ENOSPC:
                return
            raise


def arm(site_name: str, mode: str, disk: Path, marker: Path) -> None:
    """Replace the site's function by one that strikes (once) right before the call that writes there."""
    import importlib

    site = SITES[site_name]
    owner: Any = importlib.import_module(site.module)
    *parents, name = site.attribute.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    import builtins

    real = getattr(owner, name) if hasattr(owner, name) else getattr(builtins, name)  # `open`: a module global shadows it
    struck: list[str] = []

    def armed(*args: Any, **kwargs: Any) -> Any:
        path = None if struck else site.target(*args, **kwargs)
        if path is not None:
            struck.append(path)
            marker.write_text(json.dumps({"site": site_name, "path": path, "mode": mode, "pid": os.getpid()}))
            fill = "inject" if mode == "inject" else site.fill
            if fill == "inject":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            (fill_blocks if fill == "blocks" else fill_inodes)(disk)
        return real(*args, **kwargs)

    setattr(owner, name, armed)


def strike(site_name: str, mode: str, disk: Path, marker: Path, cli_args: list[str]) -> int:
    from studio.cli import main

    arm(site_name, mode, disk, marker)
    return main(cli_args)


def scenario(config_path: Path) -> int:
    config = json.loads(config_path.read_text())
    disk, out, mode = Path(config["disk"]), Path(config["out"]), config["mode"]
    if mode == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={config['size']},nr_inodes={config['inodes']}",
                        "tmpfs", str(disk)], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}

    def command(args: list[str]) -> dict[str, Any]:
        done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    def snapshot(name: str) -> None:
        shutil.copytree(disk, out / name, symlinks=True, ignore=shutil.ignore_patterns(BALLAST))

    result: dict[str, Any] = {"mode": mode}
    marker = out / "struck.json"
    result["run"] = command([sys.executable, __file__, "strike", config["site"], mode, str(disk), str(marker),
                             "run", config["preset"]])
    result["struck"] = json.loads(marker.read_text()) if marker.exists() else None
    snapshot("failed")
    shutil.rmtree(disk / BALLAST, ignore_errors=True)  # the user frees space
    runs = sorted((disk / "runs").iterdir()) if (disk / "runs").is_dir() else []
    if len(runs) == 1:
        result["resume"] = command([sys.executable, "-m", "studio.cli", "resume", str(runs[0])])
        snapshot("resumed")
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1] == "scenario":
        sys.exit(scenario(Path(sys.argv[2])))
    sys.exit(strike(sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]), sys.argv[6:]))
