"""Reading jsonl data files, line by line, with located errors.

Every user file goes through here: a pretrain line is `{"text": ...}`, an SFT line a conversation
(checked and decoded by engine.data.messages). A bad line becomes a DataError naming file:line and the
preset field that lets it be skipped, or is counted and skipped when the preset says so.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.data.messages import RecordProblem, parse_conversation
from engine.errors import DataError

Kind = Literal["pretrain", "sft"]


def skip_hint(setting: str) -> str:
    """What to do about a bad line, naming the preset field (e.g. sft.on_bad_line) that changes it."""
    return f'Fix or delete that line, or set {setting} = "skip" to skip bad lines and count them'



@dataclass
class ReadStats:
    """What a reader saw: non-blank lines, usable records, skipped lines (with the first few reasons)."""

    lines: int = 0
    records: int = 0
    skipped: int = 0
    skipped_examples: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line_no: int, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < 10:
            self.skipped_examples.append((line_no, reason))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_record(obj: Any, kind: Kind) -> Any:
    """The usable part of a parsed line: the text of a pretrain record, the engine.data.messages Conversation of
    an SFT one (roles, tools, tool calls, reasoning checked and decoded). RecordProblem says why not.
    Extra keys are allowed."""
    if kind == "sft":
        return parse_conversation(obj)
    if not isinstance(obj, dict):
        raise RecordProblem(f"expected a JSON object, got {type(obj).__name__}")
    if "text" not in obj:
        raise RecordProblem('missing key "text" (pretrain lines look like {"text": "..."})')
    if not isinstance(obj["text"], str):
        raise RecordProblem(f'"text" must be a string, got {type(obj["text"]).__name__}')
    return obj["text"]


def parse_line(raw: bytes, kind: Kind, first: bool = False) -> tuple[Any, Any] | str:
    """(the JSON object, parse_record's result) of one jsonl line, or why it is unusable. `first`: the file's
    first line, which may start with a UTF-8 byte order mark."""
    try:
        obj = json.loads(raw.decode("utf-8-sig" if first else "utf-8"))
        if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(obj):  # the scan only when an escape is there
            return ("holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), which is no character "
                    "and which no tokenizer can encode")
        return obj, parse_record(obj, kind)
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except json.JSONDecodeError as error:
        return f"not valid JSON ({error.msg} at column {error.colno})"
    except RecordProblem as error:
        return str(error)
    except RecursionError:
        return "nested too deeply to read (thousands of [ or { levels)"
    except ValueError as error:  # e.g. an integer of more than 4,300 digits (Python's limit on int parsing)
        return f"not readable JSON ({error})"


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_lone_surrogate, value))
    return False


def check_data_file(path: str | Path, setting: str) -> None:
    """DataError unless `path` is a readable regular file: a directory, a FIFO (a reader would block on it
    forever), a device or a missing path is named with the preset field that points at it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check {setting}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror}); check {setting}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a directory, not a jsonl file; point {setting} at the file inside it")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: is not a regular file (a pipe or a device); point {setting} at a jsonl file")


def iter_jsonl(
    path: str | Path, kind: Kind, on_bad_line: Literal["error", "skip"] = "error", stats: ReadStats | None = None,
    **window: Any,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_no, record) of the usable lines; `window` is iter_parsed's start_line / stop_line / setting."""
    for line_no, obj, _ in iter_parsed(path, kind, on_bad_line, stats, **window):
        yield line_no, obj


def iter_parsed(
    path: str | Path,
    kind: Kind,
    on_bad_line: Literal["error", "skip"] = "error",
    stats: ReadStats | None = None,
    *,
    start_line: int = 1,
    stop_line: int | None = None,
    setting: str | None = None,
) -> Iterator[tuple[int, dict[str, Any], Any]]:
    """Yield (line_no, record, parse_record's result) for lines start_line <= line_no < stop_line (1-based,
    physical lines); the cache uses the parsed part, so SFT lines are checked and decoded only once.

    Blank lines are ignored. A bad line raises DataError("file:line: ...") naming `setting` (the
    preset field holding on_bad_line, default "<kind>.on_bad_line") or, with on_bad_line="skip", is counted
    in `stats` and skipped. Lines outside the range are not parsed.
    """
    stats = stats if stats is not None else ReadStats()
    hint = skip_hint(setting or f"{kind}.on_bad_line")
    check_data_file(path, f"{setting.rsplit('.', 1)[0] if setting else kind}.data_path")
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if stop_line is not None and line_no >= stop_line:
                break
            if line_no < start_line or not raw.strip():
                continue
            stats.lines += 1
            got = parse_line(raw, kind, first=line_no == 1)
            if not isinstance(got, str):
                stats.records += 1
                yield line_no, *got
            elif on_bad_line == "skip":
                stats.skip(line_no, got)
            else:
                raise DataError(f"{path}:{line_no}: {got}. {hint}.")
