"""Property-based fuzzing of everything that parses a user's file (issue 15): any input gives a record or
a located error of the engine's own type (EngineError / RecordProblem) — never another exception, never a
hang. Each property runs a fixed number of generated cases (`CASES`, recorded in the issue note)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import apply_overrides, load_preset, parse_override, preset_from_dict
from engine.data.jsonl import ReadStats, iter_jsonl, parse_line
from engine.data.messages import RecordProblem, parse_conversation
from engine.errors import DataError, EngineError, PresetError

CASES = 300
FUZZ = settings(max_examples=CASES, deadline=2000, derandomize=True,  # the same cases on every run: no flakes
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# JSON values of any shape: the ingredients of both data formats, plus wrong types in every position.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "", "bot", "USER"])
message_values = st.none() | st.text(max_size=40) | st.integers() | st.lists(st.text(max_size=5), max_size=2) | json_values
messages = st.fixed_dictionaries(
    {"role": roles | json_values},
    optional={"content": message_values, "tools": message_values | st.just('[{"name": "f"}]') | st.just("[{oops"),
              "tool_calls": message_values | st.just('[{"name": "f", "arguments": {}}]') | st.just("{not json"),
              "reasoning_content": message_values, "name": message_values},
)
sft_records = st.fixed_dictionaries({"conversations": st.lists(messages, max_size=5) | json_values})
# Lines as bytes: valid records, JSON of any shape, and raw bytes (invalid UTF-8, NUL, BOMs, CR).
special_lines = st.sampled_from([
    b"\xef\xbb\xbf{\"text\": \"bom\"}", b"{\"text\": \"crlf\"}\r", b"\x00\x00", b"\xff\xfe{", b"[" * 5000 + b"]" * 5000,
    b"{\"text\": " + b"9" * 5000 + b"}", b"1e99999", b"{\"text\": \"\\ud800\"}", b"   \t ", b"{\"text\": \"x\"} trailing",
])
lines = (st.builds(lambda v: json.dumps(v).encode(), json_values | sft_records)
         | st.binary(max_size=60).filter(lambda b: b"\n" not in b) | special_lines)


@FUZZ
@given(raw=lines, kind=st.sampled_from(["pretrain", "sft"]), first=st.booleans())
def test_a_line_is_a_record_or_a_reason(raw: bytes, kind: str, first: bool) -> None:
    """Guards against any line (bad bytes, deep nesting, 5,000-digit numbers, lone surrogates) escaping
    the reader as a raw exception instead of a reason it can report or skip."""
    got = parse_line(raw, kind, first=first)  # type: ignore[arg-type]
    assert isinstance(got, str) or (isinstance(got, tuple) and len(got) == 2)


@FUZZ
@given(body=st.lists(lines, max_size=8), kind=st.sampled_from(["pretrain", "sft"]))
def test_a_file_gives_records_or_a_located_data_error(tmp_path_factory, body: list[bytes], kind: str) -> None:
    """Guards against a file of any content stopping a run with anything but a DataError naming file:line
    (on_bad_line = "error"), and against "skip" ever raising."""
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_bytes(b"\n".join(body))
    try:
        records = list(iter_jsonl(path, kind, "error"))  # type: ignore[arg-type]
    except DataError as error:
        assert str(error).startswith(f"{path}:") and f"{kind}.on_bad_line" in str(error)
    else:
        assert all(isinstance(line_no, int) for line_no, _ in records)
    stats = ReadStats()
    kept = list(iter_jsonl(path, kind, "skip", stats))  # type: ignore[arg-type]
    assert stats.records == len(kept) and stats.records + stats.skipped == stats.lines


@FUZZ
@given(record=sft_records | json_values)
def test_a_conversation_is_parsed_or_refused_with_its_reason(record) -> None:
    """Guards against any mix of roles, empty contents, wrong types or bad tool JSON crashing the SFT
    schema check instead of naming the message and key."""
    try:
        conversation = parse_conversation(record)
    except RecordProblem as problem:
        assert str(problem)
    else:
        assert conversation.messages and all(m["role"] in ("system", "user", "assistant", "tool")
                                             for m in conversation.messages)


toml_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=0, max_size=25)
toml_values = st.sampled_from(["1", "-3", "0.5", "true", '"x"', "[1, 2]", "{a = 1}", "nan", "1e400", '"', "[", ""])


@FUZZ
@given(overrides=st.lists(st.builds(lambda k, v: f"{k}={v}", toml_keys, toml_values) | st.text(max_size=20),
                          max_size=4))
def test_set_overrides_validate_or_raise_a_preset_error(overrides: list[str]) -> None:
    """Guards against a --set of any key path or value reaching the user as a traceback."""
    try:
        preset_from_dict(apply_overrides({"name": "fuzz"}, overrides))
    except PresetError as error:
        assert str(error)
    for text in overrides:
        try:
            path, _ = parse_override(text)
        except PresetError:
            continue
        assert path


@FUZZ
@given(content=st.binary(max_size=200) | st.builds(lambda v: ("[model]\n" + v).encode(), st.text(max_size=120))
       | st.builds(lambda k, v: f"{k} = {v}\n".encode(), toml_keys, toml_values))
def test_a_preset_file_of_any_bytes_loads_or_raises_a_preset_error(tmp_path_factory, content: bytes) -> None:
    """Guards against a hand-edited or corrupted preset (invalid UTF-8, bad TOML, wrong types) crashing
    the CLI or the studio instead of one paragraph naming the file."""
    path = tmp_path_factory.mktemp("fuzz") / "p.toml"
    path.write_bytes(content)
    try:
        load_preset(path)
    except PresetError as error:
        assert str(path) in str(error)


@pytest.mark.parametrize("make", ["directory", "fifo", "missing"])
def test_not_a_regular_file_is_a_data_error(tmp_path: Path, make: str) -> None:
    """Guards against a directory, a FIFO (which would block a reader forever) or a missing path given as
    data_path surfacing as IsADirectoryError / a hang / FileNotFoundError instead of a DataError."""
    path = tmp_path / "data.jsonl"
    if make == "directory":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)
    with pytest.raises(EngineError, match="data.jsonl"):
        list(iter_jsonl(path, "pretrain"))
