"""Crash-safe writes: write a temporary sibling, flush it to disk, then rename over the target.

A reader (or a resumed run after kill -9) therefore sees either the old file or folder or the new
one, never a half-written one. Files go through `write_bytes_atomic`; folders (a checkpoint, a
tokenizer, a token cache) are built in a temporary sibling and published with `publish_dir`. A write
that finds the disk full raises engine.disk_full.NoSpaceError naming the file meant, and leaves no
temporary file behind.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

from engine.disk_full import writing


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path):
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk must not keep half a file (and its space) behind
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def point_symlink(link: Path, target_name: str) -> None:
    """Atomically make `link` a relative symlink to `target_name` (a sibling), replacing any old link."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    with writing(link):
        os.symlink(target_name, tmp)
        os.replace(tmp, link)
    fsync_dir(link.parent)


def fsync_tree(path: Path) -> None:
    """Flush every file under `path`, then the folder itself, to disk."""
    for file in path.rglob("*"):
        if file.is_file() and not file.is_symlink():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)


def publish_dir(tmp: Path, final: Path, *, keep_existing: bool = False) -> bool:
    """Make the finished folder `tmp` appear as `final` in one rename, durably; True if it was published.

    Its files are flushed first, so a crash right after the rename cannot expose empty files (a rename
    can reach the disk before the data it names). An existing `final` is replaced: moved aside, then
    deleted, so leftovers of the old folder never mix with the new one. With `keep_existing`, an
    existing `final` wins instead (two processes building the same content) and `tmp` is removed.
    """
    tmp, final = Path(tmp), Path(final)
    with writing(final):  # fsync can be where a full disk shows (delayed allocation, network filesystems)
        fsync_tree(tmp)
    old = None
    if final.exists() and not keep_existing:
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        with writing(final):
            os.rename(final, old)
    try:
        with writing(final):
            os.rename(tmp, final)
    except OSError:
        if not keep_existing or not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process published the same folder first
        return False
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True


def remove_dead_temporaries(folder: Path, pattern: str) -> None:
    """Delete the folders in `folder` matching `pattern` whose names end in `-<pid>` of a process that is gone:
    what a build killed half-way left behind (a token cache's can be gigabytes). A live process's is kept."""
    for path in Path(folder).glob(pattern):
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
