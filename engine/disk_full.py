"""A full disk (or an exceeded quota), recognised in one place and told to the user as what to free.

A write that finds no space fails with ENOSPC (EDQUOT over a quota), but in several shapes: an OSError
from Python's own I/O, which names no file when it is a write() on a file already open; or a library's
own exception that only carries the text of a Rust io::Error ("... (os error 28)": safetensors,
tokenizers). So the engine's write sites (engine.atomic, the event log, checkpoints, the token cache)
wrap their writes in `writing(path)`, which turns any of those shapes into a `NoSpaceError` naming the
file; `disk_full_error` finds one anywhere in an exception chain and makes it the user's paragraph.

A run that fails on a full disk must still say why in its own directory, so each run session keeps a
small reserve file there (`keep_reserve`) and deletes it (`release_reserve`) to make room for that record.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from engine.errors import DiskFull

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust's std::io::Error shows an OS error code

RESERVE_NAME = ".disk_reserve"
# Room for what a run writes after running out of space: status.json (a new file, then the rename) and an
# error event with its traceback, in 4 KiB blocks, with margin for the heartbeat and train.log lines.
RESERVE_BYTES = 256 << 10


class NoSpaceError(OSError):
    """A write that found no space, naming the file being written (set by the innermost `writing`)."""


def no_space_errno(error: BaseException) -> int | None:
    """ENOSPC or EDQUOT when this one exception (not its chain) is a write that found no space."""
    if isinstance(error, OSError):
        return error.errno if error.errno in NO_SPACE_ERRNOS else None
    match = _RUST_OS_ERROR.search(str(error))
    code = int(match.group(1)) if match else None
    return code if code in NO_SPACE_ERRNOS else None


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Writes to `path` happen inside: a no-space failure, in any of its shapes, leaves as a NoSpaceError
    naming `path` (the file meant, not a temporary sibling or a symlink's text the OS may have named)."""
    try:
        yield
    except NoSpaceError:
        raise  # an inner site already named the file
    except Exception as error:
        code = no_space_errno(error)
        if code is None:
            raise
        raise NoSpaceError(code, os.strerror(code), str(path)) from error


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def disk_full_error(error: BaseException, run: str | None = None) -> DiskFull | None:
    """The user's paragraph for a failure caused by a full disk anywhere in `error`'s chain, else None.

    `run`: the run that failed, so the paragraph ends with how to continue it (otherwise: run the command
    again). A DiskFull already in the chain is returned as it is: a second failure while recording the
    first (closing a log on the same full disk) must not replace what the user is told."""
    chain = list(_chain(error))
    for link in chain:
        if isinstance(link, DiskFull):
            return link
    found = [link for link in chain if no_space_errno(link) is not None]
    if not found:
        return None
    named = next((link for link in found if isinstance(link, OSError) and link.filename), None)
    code = no_space_errno(found[0]) or errno.ENOSPC
    path = str(named.filename) if named is not None else None
    where = f"disk full at {path}" if path else "disk full (the file being written was not reported)"
    usage = _free_space(Path(path)) if path else ""
    if run:
        then = (f"The run directory and its newest complete checkpoint are kept as they were. Free space there "
                f"(old runs, exports, token caches of data you no longer train on), then continue with: "
                f"minimind-studio resume {run}")
    else:
        then = "Nothing already saved was changed. Free space there, then run the command again."
    return DiskFull(f"{where} ({os.strerror(code).lower()}{usage}). {then}")


def _free_space(path: Path) -> str:
    """'; 0 B free of 2.0 GiB on the filesystem of <dir>', or '' where that cannot be read."""
    folder = path
    while not folder.is_dir() and folder != folder.parent:  # the file (or its temporary folder) may be gone
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return ""
    return f"; {_size(usage.free)} free of {_size(usage.total)} on the filesystem of {folder}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def keep_reserve(folder: Path) -> bool:
    """Hold RESERVE_BYTES in folder/.disk_reserve (random bytes: a compressing filesystem stores zeros in
    nothing). False when there is no room for it even now; the run goes on without one."""
    path = folder / RESERVE_NAME
    with suppress(OSError):
        if path.stat().st_size == RESERVE_BYTES:
            return True
    try:
        with open(path, "wb") as handle:
            handle.write(os.urandom(RESERVE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        return True
    except OSError:
        release_reserve(folder)
        return False


def release_reserve(folder: Path) -> None:
    """Give the reserve's space back (to the failure record, or at the end of a session)."""
    with suppress(OSError):
        (folder / RESERVE_NAME).unlink(missing_ok=True)
