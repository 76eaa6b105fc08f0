"""Control characters, escape sequences, bidi overrides and Rich markup from a model, a tool result or a tools
file shown inert: in the terminal chat's printer (a real Rich console writing terminal bytes) and in the
Chat tab (the Textual pilot, with a stand-in session streaming a hostile reply)."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from engine.chat.reply import ReplyStream, parse_reply
from studio.app import StudioApp
from studio.chat_console import print_note, print_reply
from studio.inert import inert
from studio.widgets.chat.chat_log import ChatLog
from tests.studio.test_chat import open_chat
from tests.studio.test_chat_tools import ScriptedSession
from tests.support.wait import until

ESC = "\x1b"
REPLY = (
    f"<think>plan {ESC}]0;pwned title\x07 quietly</think>"
    f"Clear{ESC}[2J{ESC}[H home {ESC}]8;;http://evil.example{ESC}\\link{ESC}]8;;{ESC}\\ "
    "cr\rover back\x08\x08 bell\x07 csi\x9b31m nul\x00 del\x7f rlo\u202eevil\u202c [bold red]markup[/] "
    "[link=http://evil.example]click[/link]\n\tindented"
    '<tool_call>{"name": "rm\\u001b[2K\\u202e", "arguments": {"path": "/"}}</tool_call>'
)
PIECES = [REPLY[i:i + 3] for i in range(0, len(REPLY), 3)]  # escape sequences and tags cut across pieces
RESULT = f"result{ESC}[31m red{ESC}[0m\r\nnext line\x07"
# What would act on a terminal: C0 but \n and \t, DEL, C1, bidi controls, lone surrogates.
ACTIVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours and bold: the only sequences the printer itself writes


def assert_inert(shown: str) -> None:
    """Nothing in `shown` acts on a terminal, and the hostile parts are there to read."""
    plain = SGR.sub("", shown)
    assert ACTIVE.findall(plain) == []
    for visible in ("␛[2J", "␛]0;pwned title␇", "␛]8;;http://evil.example␛\\link", "cr␍over", "back␈␈",
                    "\\u{9b}31m", "nul␀", "del␡", "\\u{202e}evil\\u{202c}", "[bold red]markup[/]",
                    "[link=http://evil.example]click[/link]"):
        assert visible in plain, visible


@given(st.text())
@settings(max_examples=300, derandomize=True)
def test_inert_leaves_nothing_active_and_plain_text_alone(text: str) -> None:
    """Guards against a character class that slips through the stand-ins (any text, 300 generated cases), and
    against the stand-ins touching text that was already harmless (letters, CJK, emoji, `\\n`, `\\t`)."""
    shown = inert(text)
    assert ACTIVE.findall(shown) == []
    if not ACTIVE.search(text):
        assert shown == text


def test_terminal_printer_writes_no_control_bytes() -> None:
    """Guards against a model's reply (answer, reasoning or a tool call's name) or a tools file's names
    clearing the screen, retitling the terminal, moving the cursor, opening links or being read as Rich
    markup: the bytes a real terminal console writes hold only the printer's own colour codes."""
    out = StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=300)
    parser = print_reply(console, iter(PIECES))
    print_note(console, f"(tools: evil{ESC}]0;t\x07, [bold]x[/])")
    written = out.getvalue()
    assert_inert(written)
    assert "tool call: rm␛[2K\\u{202e}" in SGR.sub("", written) and "(tools: evil␛]0;t␇, [bold]x[/])" in written
    assert "\n\tindented" in parser.answer and "␉" not in written  # layout characters stay layout
    assert ESC in parser.answer  # the reply itself is kept as the model wrote it; only its display is inert


class HostileSession(ScriptedSession):
    """A ScriptedSession that streams REPLY in small pieces and takes a tool result for its call."""

    def reply(self, text, sampling) -> ReplyStream:
        return ReplyStream(self._hostile([{"role": "user", "content": text}]))

    def continue_reply(self, sampling) -> ReplyStream:
        return ReplyStream(self._hostile([]))

    def _hostile(self, turns):
        yield from PIECES
        self.history += [*turns, parse_reply(REPLY).assistant_message()]

    def pending_calls(self) -> list[dict[str, Any]]:
        last = self.history[-1] if self.history else {}
        return list(last.get("tool_calls") or []) if last.get("role") == "assistant" else []

    def add_tool_result(self, content: str) -> list[dict[str, Any]]:
        self.history.append({"role": "tool", "content": content})
        return []


def log_text(log: ChatLog) -> str:
    """Every line the log's widgets render, as the screen would get them, plus the folded reasoning."""
    lines = []
    for widget in log.query("Static"):
        lines.append(str(widget.render()))
        lines += [widget.render_line(y).text for y in range(widget.size.height)]
    return "\n".join(lines)


async def test_chat_tab_shows_a_hostile_reply_inert(trained_run: Path, tmp_path: Path) -> None:
    """Guards against the Chat tab passing a reply's escape sequences and controls (answer, reasoning, tool
    call), a /result file's or a tools file's to the terminal, or reading them as markup: every rendered line
    holds only visible stand-ins, and the history keeps what the model wrote."""
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await open_chat(pilot)
        session = HostileSession()
        pane.sessions[0], pane.loaded[0] = session, pane.checkpoint(0)  # already "loaded": no torch
        tools = tmp_path / "tools.json"
        tools.write_text(json.dumps([{"name": f"evil{ESC}]0;t\x07", "parameters": {}}]))
        pane.send(f"/tools {tools}")
        pane.send(f"say it {ESC}[5n")
        await until(pilot, lambda: not pane.busy, what="the reply")
        (tmp_path / "result.txt").write_text(RESULT, newline="")
        pane.send(f"/result @{tmp_path / 'result.txt'}")
        await until(pilot, lambda: not pane.busy, what="the reply after the result")
        await pilot.pause()

        log = app.query_one("#chat-log-0", ChatLog)
        shown = log_text(log)
        assert_inert(shown)
        assert "evil␛]0;t␇" in shown and "say it ␛[5n" in shown
        assert "red␛[0m\nnext line␇" in shown  # CRLF read as a line end, as `less` shows it
        assert "tool call: rm␛[2K\\u{202e}" in shown
        assert ESC in session.history[1]["content"] and log.reply_text == session.history[-1]["content"]
