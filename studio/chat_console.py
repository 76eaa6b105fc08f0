"""The terminal chat's reply printer and its /tools, /think and /result commands (kept out of cli.py, which
only dispatches; the Chat tab runs the same commands).

Reasoning is printed dim on its own lines, apart from the answer; a tool call as `tool call: name(args)`.
Pieces are printed as they stream: the parser releases text as soon as no tag can still be forming.
Everything printed that came from the model, a tool result or a tools file goes through studio.inert
(control characters and escape sequences shown as visible stand-ins, never acting on the terminal) and is
printed as text, never read as Rich markup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from engine.api.chat import ReplyParser, ReplyStream, ToolCall, read_tool_result, read_tool_specs
from engine.errors import ToolResultError, ToolSpecError
from studio.inert import inert


def print_reply(console: Console, pieces: Iterable[str]) -> ReplyParser:
    """Print a streamed reply split into its parts; returns the parser (what was said, for callers/tests).
    A session's ReplyStream says where the reply starts (inside reasoning when the prompt opened `<think>`)."""
    parser = pieces.parser() if isinstance(pieces, ReplyStream) else ReplyParser()
    last: str | None = None  # the part being printed: a new part starts on a new line

    def show(events: list) -> None:
        nonlocal last
        for event in events:
            if isinstance(event, ToolCall):
                console.print(("\n" if last else "") + f"[bold magenta]tool call:[/] {escape(inert(event.label()))}",
                              highlight=False, end="")
                last = "call"
                continue
            kind, text = event
            if kind != last:
                console.print("\n" if last else "", end="")
                if kind == "reasoning":
                    console.print("[dim italic]thinking:[/] ", end="")
            console.out(inert(text), style="dim" if kind == "reasoning" else None, end="", highlight=False)
            last = kind

    try:
        for piece in pieces:
            show(parser.feed(piece))
    finally:  # also on Ctrl+C: show what was held back
        show(parser.finish())
        console.print()
    return parser


STOPPED = "(stopped; the partial reply stays in the conversation. Ctrl-C at the prompt, or Ctrl-D, leaves the chat)"


def chat_turn(console: Console, session: Any, start: Callable[[], ReplyStream]) -> bool:
    """One reply, printed as it streams; returns whether Ctrl-C stopped it.

    Ctrl-C while it streams ends generation (the KeyboardInterrupt lands inside the generator, or in the
    printing between pieces), prints what the parser held back and returns to the prompt. The partial
    reply stays in the session's history, as the Chat tab's stop keeps it: it is what the user read, and
    the next turn can refer to it (/clear forgets it)."""
    stream: ReplyStream | None = None
    stopped = False
    try:
        stream = start()
        if stream.notice:
            print_note(console, f"({stream.notice})", ok=True)
        console.print("[bold cyan]ai>[/] ", end="")
        print_reply(console, stream)
    except KeyboardInterrupt:
        if stream is not None:
            stream.close()  # a generator stopped between pieces records its turn as it closes
        print_note(console, STOPPED)
        stopped = True
    if session.pending_calls():
        console.print("[dim](give the tool's result with /result TEXT or /result @FILE)[/]")
    return stopped


def print_note(console: Console, line: str, ok: bool = True) -> None:
    """A command's answer: dim when it worked, red when it was refused."""
    console.print(f"[{'dim' if ok else 'red'}]{escape(inert(line))}[/]", highlight=False)


def print_tools_command(console: Console, argument: str, session: Any) -> bool:
    ok, line = tools_command(argument, session)
    print_note(console, line, ok)
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
    inner = [spec["function"] if isinstance(spec.get("function"), dict) else spec for spec in specs or []]
    return [str(spec.get("name", "?")) for spec in inner]


def think_command(argument: str, session: Any) -> tuple[bool, str]:
    """`/think on|off` passes enable_thinking to a template that takes it; `/think` says how it stands."""
    if not session.takes_thinking:
        return False, "think: this model's chat template has no enable_thinking switch"
    argument = argument.strip().lower()
    if argument in ("on", "off"):
        session.thinking = argument == "on"
        return True, f"(thinking {argument} from the next reply on)"
    if not argument:
        state = {None: "the template's default", True: "on", False: "off"}[session.thinking]
        return True, f"(thinking: {state}; /think on|off)"
    return False, "think: /think on or /think off"


ResultOutcome = Literal["refused", "waiting", "go"]


def result_command(argument: str, session: Any) -> tuple[ResultOutcome, str]:
    """`/result TEXT` or `/result @FILE` answers the next tool call waiting in `session` with a tool turn.
    "go" when none waits any more (the caller lets the model continue_reply), "waiting" while the reply's
    other calls still want theirs, "refused" (nothing recorded) when no call waits or the file is unreadable."""
    try:
        waiting = session.add_tool_result(read_tool_result(argument))
    except ToolResultError as error:
        return "refused", f"result: {error}"
    if waiting:
        return "waiting", f"(result recorded; still waiting: {', '.join(call_labels(waiting))}; /result for each)"
    return "go", ""


def call_labels(calls: list[dict[str, Any]]) -> list[str]:
    """History tool calls ({"name", "arguments"}) written as the chat shows them: `name({...})`."""
    return [ToolCall(call.get("name"), call.get("arguments", {}), "").label() for call in calls]
