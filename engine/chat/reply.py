"""A model's reply split into reasoning, answer text and tool calls, piece by piece as it streams.

Both the built-in template and the Qwen-style ones minimind adopts write reasoning as
`<think>...</think>` and each call as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`, so one
parser serves every chat model. It is fed the decoded pieces of a stream and returns what is certain so
far; a tag may arrive cut across pieces (`<thi` + `nk>`), so a tail that could still become a tag is held
back until the next piece decides it. Some templates (Qwen3-style thinking models) open the think block in
the generation prompt itself; the reply then starts inside reasoning, which `reply_start` reads from the
prompt's tail and a parser is told with `start=`. Pure Python: the studio's UI thread uses it without torch.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.errors import ToolResultError, ToolSpecError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
Kind = Literal["reasoning", "answer"]
Section = Literal["answer", "reasoning", "call"]  # where the parser stands: Kind, or inside a call
OPENS: dict[str, Section] = {THINK_OPEN: "reasoning", CALL_OPEN: "call"}


@dataclass(frozen=True)
class ToolCall:
    """One call: name and arguments when its JSON parses, else name None and only the raw text."""

    name: str | None
    arguments: Any
    raw: str

    def label(self) -> str:
        """`name({"a": 1})` for the user; an unparsable call as it was written, so nothing is hidden."""
        if self.name is None:
            return self.raw
        args = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments, ensure_ascii=False)
        return f"{self.name}({args})"


def parse_tool_call(raw: str) -> ToolCall:
    text = raw.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return ToolCall(None, None, text)
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]  # OpenAI's {"type": "function", "function": {...}} wrapping
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(None, None, text)
    return ToolCall(obj["name"], obj.get("arguments", {}), text)


Event = tuple[Kind, str] | ToolCall


def _tag_prefix_len(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is the start of one of `tags` (a tag cut by the stream)."""
    for n in range(min(len(text), max(map(len, tags)) - 1), 0, -1):
        if any(tag.startswith(text[-n:]) for tag in tags):
            return n
    return 0


@dataclass
class ReplyParser:
    """Feed pieces, get events: ("reasoning", text), ("answer", text) or a ToolCall.

    Whitespace at the start of a section and before a tag is dropped (the template's newlines around
    tags are layout, not words), so trailing whitespace is held back until more text follows it.
    `start="reasoning"` when the prompt already opened `<think>` (see reply_start): the reply's first words
    are then thinking, and its `</think>` leads to the answer.
    """

    start: Kind = "answer"
    reasoning: str = ""
    answer: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    _state: Section = "answer"
    _buffer: str = ""
    _fresh: bool = True  # nothing emitted yet in the current section: leading whitespace is dropped

    def __post_init__(self) -> None:
        self._state = self.start

    @property
    def section(self) -> Section:
        """Where the text fed so far has left the reply: in the answer, inside `<think>` or inside a call."""
        return self._state

    def feed(self, piece: str) -> list[Event]:
        self._buffer += piece
        events: list[Event] = []
        while True:
            close = {"answer": None, "reasoning": THINK_CLOSE, "call": CALL_CLOSE}[self._state]
            found = self._next_tag()
            if found is None:
                break
            at, tag = found
            text, self._buffer = self._buffer[:at], self._buffer[at + len(tag):]
            if self._state == "call":
                events.append(self._add_call(text))
            else:
                events += self._emit(text.rstrip())
            self._state = OPENS.get(tag, "answer") if tag != close else "answer"
            self._fresh = True
        if self._state != "call":
            tags = (THINK_OPEN, CALL_OPEN) if self._state == "answer" else (THINK_CLOSE,)
            keep = len(self._buffer) - _tag_prefix_len(self._buffer, tags)
            body = self._buffer[:keep]
            ready = len(body.rstrip())  # trailing whitespace waits: a tag may follow it
            events += self._emit(body[:ready])
            self._buffer = self._buffer[ready:]
        return events

    def finish(self) -> list[Event]:
        """The end of the stream: an unclosed think block is still reasoning, an unclosed call is shown raw."""
        rest, self._buffer = self._buffer, ""
        if self._state == "call":
            return [self._add_call(rest)] if rest.strip() else []
        return self._emit(rest.rstrip())

    def _next_tag(self) -> tuple[int, str] | None:
        tags = {"answer": (THINK_OPEN, CALL_OPEN), "reasoning": (THINK_CLOSE,), "call": (CALL_CLOSE,)}[self._state]
        hits = [(self._buffer.find(tag), tag) for tag in tags if tag in self._buffer]
        return min(hits) if hits else None

    def _emit(self, text: str) -> list[Event]:
        if self._fresh:
            text = text.lstrip()
        if not text:
            return []
        self._fresh = False
        kind: Kind = "reasoning" if self._state == "reasoning" else "answer"
        if kind == "reasoning":
            self.reasoning += text
        else:
            self.answer += text
        return [(kind, text)]

    def _add_call(self, raw: str) -> ToolCall:
        call = parse_tool_call(raw)
        self.tool_calls.append(call)
        return call

    def assistant_message(self) -> dict[str, Any]:
        """The turn as the history keeps it: the answer and the calls, never the reasoning (a model is not
        trained to read its earlier thinking back, and it would fill the context). An unparsable call stays
        in the content as written, so the next turn still sees what the model said."""
        content = self.answer
        for call in self.tool_calls:
            if call.name is None:
                content += ("\n" if content else "") + f"{CALL_OPEN}\n{call.raw}\n{CALL_CLOSE}"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        calls = [{"name": c.name, "arguments": c.arguments} for c in self.tool_calls if c.name is not None]
        if calls:
            message["tool_calls"] = calls
        return message


def parse_reply(text: str, start: Kind = "answer") -> ReplyParser:
    """A complete reply, parsed in one go (start: see ReplyParser)."""
    parser = ReplyParser(start=start)
    parser.feed(text)
    parser.finish()
    return parser


def reply_start(prompt: str) -> Kind:
    """Where a reply to `prompt` begins. A generation prompt that ends by opening `<think>` (Qwen3-style
    thinking templates: `<|im_start|>assistant\n<think>\n`) leaves the model inside its reasoning, and the
    reply carries only the closing tag; one that closes an empty block (`<think>\n\n</think>\n\n`, thinking
    off) or has none leaves it at the answer."""
    return "reasoning" if prompt.rstrip().endswith(THINK_OPEN) else "answer"


@dataclass
class ReplyStream:
    """A reply being generated: iterate it for the raw pieces, close it to stop early.

    `start` is where the reply begins (reply_start of its prompt), so a reader builds its parser with
    `parser()`; `reasoning_tokens` counts the generated tokens that belong to the think block (its tags
    included), filled in by the session as the pieces stream.
    """

    pieces: Generator[str, None, None]
    start: Kind = "answer"
    reasoning_tokens: int = 0
    # Fitting the prompt into the model's context: whole oldest turns dropped from the conversation, and
    # whether even the newest turn alone was too long (then only its end is read). `notice` says it in words.
    dropped_turns: int = 0
    cut_prompt: bool = False

    @property
    def notice(self) -> str | None:
        parts = []
        if self.dropped_turns:
            parts.append(f"the {self.dropped_turns} oldest message(s) were dropped to fit the model's context")
        if self.cut_prompt:
            parts.append("the message is longer than the model's context: only its end was read")
        return "; ".join(parts) or None

    def __iter__(self) -> ReplyStream:
        return self

    def __next__(self) -> str:
        return next(self.pieces)

    def close(self) -> None:
        self.pieces.close()

    def parser(self) -> ReplyParser:
        return ReplyParser(start=self.start)



def read_tool_result(argument: str) -> str:
    """What `/result` gives: the text as typed, or `@FILE` for a file's contents (a JSON reply, say)."""
    argument = argument.strip()
    if not argument:
        raise ToolResultError("give the tool's result: /result TEXT or /result @FILE")
    if not argument.startswith("@"):
        return argument
    path = Path(argument[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ToolResultError(f"{path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ToolResultError(f"{path}: not UTF-8 text") from None



def read_tool_specs(path: str | Path) -> list[dict[str, Any]]:
    """Function specs from a JSON file: a list of objects (one object alone is taken as a list of one)."""
    path = Path(path).expanduser()
    try:
        specs = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ToolSpecError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ToolSpecError(f"{path}: not valid JSON ({error})") from None
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
        raise ToolSpecError(f'{path}: expected a JSON list of function specs, e.g. [{{"name": "add", "parameters": {{...}}}}]')
    return specs
