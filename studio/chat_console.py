"""The terminal chat's reply printer and its /tools command (kept out of cli.py, which only dispatches).

Reasoning is printed dim on its own lines, apart from the answer; a tool call as `tool call: name(args)`.
Pieces are printed as they stream: the parser releases text as soon as no tag can still be forming.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape

from engine.chat.reply import ReplyParser, ToolCall, ToolSpecError, read_tool_specs


def print_reply(console: Console, pieces: Iterable[str]) -> ReplyParser:
    """Print a streamed reply split into its parts; returns the parser (what was said, for callers/tests)."""
    parser = ReplyParser()
    last: str | None = None  # the part being printed: a new part starts on a new line

    def show(events: list) -> None:
        nonlocal last
        for event in events:
            if isinstance(event, ToolCall):
                console.print(("\n" if last else "") + f"[bold magenta]tool call:[/] {escape(event.label())}",
                              highlight=False, end="")
                last = "call"
                continue
            kind, text = event
            if kind != last:
                console.print("\n" if last else "", end="")
                if kind == "reasoning":
                    console.print("[dim italic]thinking:[/] ", end="")
            console.out(text, style="dim" if kind == "reasoning" else None, end="", highlight=False)
            last = kind

    try:
        for piece in pieces:
            show(parser.feed(piece))
    finally:  # also on Ctrl+C: show what was held back
        show(parser.finish())
        console.print()
    return parser


def print_tools_command(console: Console, argument: str, session: Any) -> bool:
    ok, line = tools_command(argument, session)
    console.print(f"[{'dim' if ok else 'red'}]{escape(line)}[/]", highlight=False)
    return ok


def tools_command(argument: str, session: Any) -> tuple[bool, str]:
    """`/tools FILE` sets the session's tool specs, `/tools off` removes them, `/tools` shows them.
    Returns (ok, the line to print); a bad file leaves the specs as they were."""
    argument = argument.strip()
    if argument in ("off", "none"):
        session.tools = None
        return True, "(tools off)"
    if not argument:
        names = tool_names(session.tools)
        return True, f"(tools: {', '.join(names)})" if names else "(no tools: /tools FILE gives a JSON list of function specs)"
    try:
        session.tools = read_tool_specs(argument)
    except ToolSpecError as error:
        return False, f"tools: {error}"
    return True, f"(tools: {', '.join(tool_names(session.tools))}; offered in the system turn from the next message on)"


def tool_names(specs: list[dict[str, Any]] | None) -> list[str]:
    """Each spec's name, also under OpenAI's {"type": "function", "function": {...}} wrapping."""
    inner = [spec.get("function") if isinstance(spec.get("function"), dict) else spec for spec in specs or []]
    return [str(spec.get("name", "?")) for spec in inner]
