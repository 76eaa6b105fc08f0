"""The SFT record schema minimind publishes today, checked and normalized before any chat template sees it.

A line is {"conversations": [message, ...]}. A message has a role (system | user | assistant | tool) and
a string "content", and may carry:
  - "tools" (system message): the function specs offered to the model; a JSON string holding a list, or the list
  - "tool_calls" (assistant): the calls it makes; a JSON string holding a list, or the list. A call is
    {"name", "arguments"} or OpenAI's {"type": "function", "function": {"name", "arguments"}}
  - "reasoning_content" (assistant): the thinking before the answer
JSON strings are decoded here, once, so the template receives what minimind's own loader gives it: the tool
specs as `tools=` of apply_chat_template, the calls as a list on the message. A role "tool" message is a
tool's result. An assistant turn that only calls tools may have empty (or null) content.

Checked by hand rather than with pydantic: this runs on every line of multi-GB files, and each problem must
name the message index and the key, in the located "file:line: ..." errors of engine.data.jsonl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
_EMPTY: tuple[object, ...] = (None, "", [])  # how exporters write "no tools" / "no calls"; treated as the key being absent


class RecordProblem(ValueError):
    """Why one record cannot be used; the reader prefixes file:line and the on_bad_line hint."""


@dataclass(frozen=True)
class Conversation:
    """A checked SFT record, ready for apply_chat_template(messages, tools=tools)."""

    messages: list[dict[str, Any]]
    """Shallow copies of the file's messages: tool_calls decoded to lists, keys with empty values dropped."""
    tools: list[dict[str, Any]] | None
    """The system message's tool specs, decoded; None when there are none."""


def parse_conversation(obj: Any) -> Conversation:
    """The record as a Conversation, or RecordProblem saying which message and key is wrong."""
    if not isinstance(obj, dict):
        raise RecordProblem(f"expected a JSON object, got {type(obj).__name__}")
    raw = obj.get("conversations")
    if raw is None:
        raise RecordProblem(
            'missing key "conversations" (SFT lines look like {"conversations": [{"role": ..., "content": ...}]})')
    if not isinstance(raw, list) or not raw:
        raise RecordProblem('"conversations" must be a non-empty list of messages')
    messages: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] | None = None
    for i, message in enumerate(raw):
        msg, specs = _message(i, message)
        if specs is not None:
            if tools is not None:  # minimind's loader would keep the last one silently; say so instead
                raise RecordProblem(f'message {i} carries "tools" too; give the tool specs on one system message')
            tools = specs
        messages.append(msg)
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        raise RecordProblem("the conversation has no assistant turn, so there is nothing to learn from it")
    last = assistants[-1]
    if not last["content"].strip() and not last.get("tool_calls") and not str(last.get("reasoning_content") or "").strip():
        raise RecordProblem(
            f"message {messages.index(last)}, the last assistant turn, is empty and calls no tool, "
            "so the model would learn to answer with nothing")
    return Conversation(messages, tools)


def _message(i: int, raw: Any) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(the message as the template gets it, its decoded tool specs or None)."""
    if not isinstance(raw, dict):
        raise RecordProblem(f"message {i} is not an object")
    role = raw.get("role")
    if len(raw) == 2 and type(raw.get("content")) is str and role in ROLES:
        return dict(raw), None  # most messages of a file: a role and a text, nothing else to check or decode
    if role not in ROLES:
        raise RecordProblem(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
    msg = {key: value for key, value in raw.items() if key not in ("tools", "tool_calls") or value not in _EMPTY}
    for key, owner in (("tools", "system"), ("tool_calls", "assistant"), ("reasoning_content", "assistant")):
        if role != owner and raw.get(key) not in _EMPTY:
            raise RecordProblem(f'message {i} ({role}) has "{key}"; only {owner} messages carry it')
    reasoning = raw.get("reasoning_content")
    if reasoning is None:
        msg.pop("reasoning_content", None)
    elif not isinstance(reasoning, str):
        raise RecordProblem(f'message {i} "reasoning_content" must be a string, got {type(reasoning).__name__}')
    calls = _json_list(i, raw, "tool_calls")
    if calls is not None:
        for n, call in enumerate(calls):
            _check_call(i, n, call)
        msg["tool_calls"] = calls
    content = raw.get("content")
    if content is None and calls is not None:
        msg["content"] = ""  # OpenAI-style null content beside a tool call; every template renders it as empty
    elif not isinstance(content, str):
        raise RecordProblem(f'message {i} needs a string "content"')
    specs = _json_list(i, raw, "tools")
    if specs is not None and not all(isinstance(spec, dict) for spec in specs):
        raise RecordProblem(f'message {i} "tools" must be a list of objects (one function spec each)')
    return msg, specs


def _json_list(i: int, raw: dict[str, Any], key: str) -> list[Any] | None:
    """raw[key] as a list: JSON strings decoded, lists taken as they are; None when absent or empty."""
    value = raw.get(key)
    if value in _EMPTY:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise RecordProblem(f'message {i} "{key}" is not valid JSON ({error.msg} at column {error.colno})') from None
    if not isinstance(value, list):
        raise RecordProblem(f'message {i} "{key}" must be a list (or a JSON string of one), got {type(value).__name__}')
    return value or None


def _check_call(i: int, n: int, call: Any) -> None:
    """A call names its function; its arguments, when given, are an object or a JSON string of one."""
    where = f'message {i} "tool_calls"[{n}]'
    if not isinstance(call, dict):
        raise RecordProblem(f"{where} is not an object")
    function = call.get("function")
    fn: dict[str, Any] = function if isinstance(function, dict) else call
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RecordProblem(f'{where} has no "name" (a call looks like {{"name": ..., "arguments": {{...}}}})')
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            json.loads(args)
        except json.JSONDecodeError as error:
            raise RecordProblem(f'{where} "arguments" is not valid JSON ({error.msg} at column {error.colno})') from None
    elif args is not None and not isinstance(args, dict):
        raise RecordProblem(f'{where} "arguments" must be an object or a JSON string, got {type(args).__name__}')
