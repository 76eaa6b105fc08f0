"""The SFT message schema: every kind of minimind message accepted and normalized, every bad one located."""

from __future__ import annotations

import json

import pytest

from engine.data.jsonl import ReadStats, iter_jsonl
from engine.data.messages import RecordProblem, parse_conversation
from engine.data.token_cache import build_token_cache
from engine.errors import DataError
from tests.engine.chat_fixtures import (
    CALC,
    RECORDS,
    WEATHER,
    make_minimind_style_dir,
    minimind_messages,
    write_jsonl,
)

USER = {"role": "user", "content": "q"}
ANSWER = {"role": "assistant", "content": "a"}


def test_every_message_kind_is_accepted_and_decoded_like_minimind():
    """Guards against tool conversations being rejected as bad lines, or their tools / tool_calls reaching
    the template still as JSON strings (a template iterating a string renders garbage)."""
    for record in RECORDS:
        conv = parse_conversation(record)
        messages, tools = minimind_messages(record)
        assert conv.tools == tools
        for ours, theirs in zip(conv.messages, messages):
            assert ours["role"] == theirs["role"] and ours.get("tool_calls") == (theirs.get("tool_calls") or None)
            assert isinstance(ours["content"], str) and ours.get("reasoning_content") == theirs.get("reasoning_content")
    weather = parse_conversation(RECORDS[3])
    assert weather.tools == [WEATHER] and weather.messages[2]["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "北京"}}]
    listed = parse_conversation(RECORDS[4])
    assert listed.tools is RECORDS[4]["conversations"][0]["tools"]  # lists are taken as they are
    assert parse_conversation(RECORDS[5]).messages[2]["content"] == ""  # null content beside a call


def test_parsing_leaves_the_record_untouched():
    """Guards against normalization editing the record it was given (the studio shows records as read)."""
    record = json.loads(json.dumps(RECORDS[3]))
    before = json.dumps(record, sort_keys=True)
    parse_conversation(record)
    assert json.dumps(record, sort_keys=True) == before


@pytest.mark.parametrize(
    "conversation,why",
    [
        ([{"role": "system", "content": "s", "tools": "[{\"name\": "}, USER, ANSWER],
         'message 0 "tools" is not valid JSON'),
        ([USER, {"role": "assistant", "content": "", "tool_calls": "[{'name': 'f'}]"}],
         'message 1 "tool_calls" is not valid JSON'),
        ([USER, {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{x"}]}],
         'message 1 "tool_calls"[0] "arguments" is not valid JSON'),
        ([USER, {"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}],
         'message 1 "tool_calls"[0] has no "name"'),
        ([USER, {"role": "assistant", "content": "", "tool_calls": "{\"name\": \"f\"}"}],
         'message 1 "tool_calls" must be a list'),
        ([{"role": "system", "content": "s", "tools": ["f"]}, USER, ANSWER], 'message 0 "tools" must be a list of objects'),
        ([{"role": "user", "content": "q", "tools": [CALC]}, ANSWER], 'message 0 (user) has "tools"'),
        ([USER, ANSWER, {"role": "tool", "content": "r", "tool_calls": [{"name": "f"}]}], 'message 2 (tool) has "tool_calls"'),
        ([USER, {"role": "assistant", "content": "a", "reasoning_content": 3}], '"reasoning_content" must be a string'),
        ([USER, {"role": "bot", "content": "x"}], "role 'bot'"),
        ([USER, {"role": "assistant", "content": None}], 'message 1 needs a string "content"'),
        ([USER, ANSWER, USER, {"role": "assistant", "content": "  "}], "message 3, the last assistant turn, is empty"),
        ([{"role": "system", "content": "s", "tools": [CALC]}, {"role": "system", "content": "t", "tools": [CALC]}, USER, ANSWER],
         'message 1 carries "tools" too'),
        ([USER, {"role": "tool", "content": "r"}], "no assistant turn"),
    ],
)
def test_bad_messages_are_located_by_file_line_and_key(tmp_path, conversation, why):
    """Guards against malformed tool JSON or an empty final answer failing somewhere inside the template
    (or training on nothing) instead of naming the file, the line, the message and the key to fix."""
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": [USER, ANSWER]}, {"conversations": conversation}])
    with pytest.raises(DataError) as info:
        list(iter_jsonl(path, "sft"))
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and why in message, message
    assert 'sft.on_bad_line = "skip"' in message
    stats = ReadStats()
    assert [n for n, _ in iter_jsonl(path, "sft", "skip", stats)] == [1] and stats.skipped == 1


def test_empty_turns_that_call_tools_or_come_earlier_are_valid():
    """Guards against refusing minimind's calling turns (empty content, a tool call) or an empty turn in
    the middle of a chat; only an empty final turn with no call teaches nothing."""
    calling = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]}
    parse_conversation({"conversations": [USER, calling]})
    parse_conversation({"conversations": [USER, {"role": "assistant", "content": ""}, USER, ANSWER]})
    parse_conversation({"conversations": [USER, {"role": "assistant", "content": "", "reasoning_content": "hm"}]})
    with pytest.raises(RecordProblem, match="last assistant turn"):
        parse_conversation({"conversations": [USER, ANSWER, USER, {"role": "assistant", "content": ""}]})


def test_cache_errors_name_the_stage_field(tmp_path):
    """Guards against errors saying 'set on_bad_line' without saying which of the preset's three on_bad_line
    fields (tokenizer, pretrain, sft) the user must change."""
    tok = make_minimind_style_dir(tmp_path / "tok")
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": [USER, ANSWER]}, "{broken"])
    with pytest.raises(DataError, match=r':2: not valid JSON.*set sft\.on_bad_line = "skip"'):
        build_token_cache(path, tok, "sft", tmp_path / "cache")
    build_token_cache(path, tok, "sft", tmp_path / "cache", on_bad_line="skip")
    with pytest.raises(DataError, match=r':2: not valid JSON.*set sft\.on_bad_line = "skip"'):  # the cached skip
        build_token_cache(path, tok, "sft", tmp_path / "cache")
    empty = write_jsonl(tmp_path / "empty.jsonl", ["{broken"])
    with pytest.raises(DataError, match=r"Point pretrain\.data_path at a pretrain jsonl file"):
        build_token_cache(empty, tok, "pretrain", tmp_path / "cache", on_bad_line="skip")
