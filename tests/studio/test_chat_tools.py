"""The Chat tab and the terminal chat with a reply that thinks and calls a tool (fixed pieces, no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.widgets import Input

from engine.chat.reply import ReplyStream, parse_reply
from studio.app import StudioApp
from studio.chat_console import print_reply, tools_command
from studio.widgets.chat.chat_log import ChatLog
from tests.studio.test_chat import open_chat
from tests.support.wait import until

REPLY = ('<think>\nadd them — 2 und 3\n</think>\nCalling add.\n'
         '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>')
PIECES = [REPLY[i:i + 4] for i in range(0, len(REPLY), 4)]  # tags cut across pieces


class ScriptedSession:
    """Stands in for engine.chat.session.ChatSession: streams REPLY in fixed pieces and records the tools it got."""

    mode = "chat"
    takes_thinking = False

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.system_prompt = None
        self.tools: list[dict[str, Any]] | None = None
        self.tools_seen: list[Any] = []

    def reply(self, text, sampling) -> ReplyStream:
        self.tools_seen.append(self.tools)
        return ReplyStream(self._pieces(text))

    def _pieces(self, text):
        yield from PIECES
        self.history += [{"role": "user", "content": text}, parse_reply(REPLY).assistant_message()]

    def clear(self) -> None:
        self.history.clear()


def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([{"name": "add", "parameters": {"type": "object"}}]))
    return path


async def test_tab_shows_reasoning_apart_and_the_call_as_a_call(trained_run: Path, tmp_path: Path) -> None:
    """Guards against reasoning shown as part of the answer (or copied with it), a tool call shown as raw
    JSON in the answer, and /tools specs that never reach the session."""
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        pane = await open_chat(pilot)
        session = ScriptedSession()
        pane.sessions[0], pane.loaded[0] = session, pane.checkpoint(0)  # already "loaded": no torch
        pane.send(f"/tools {tmp_path / 'missing.json'}")
        await pilot.pause()
        assert pane.query_one("#s-tools", Input).value == ""  # a bad file leaves the field alone
        pane.send(f"/tools {tools_file(tmp_path)}")
        await pilot.pause()
        assert pane.query_one("#s-tools", Input).value == str(tmp_path / "tools.json")
        await pilot.press(*"2 plus 3?", "enter")
        await until(pilot, lambda: not pane.busy, what="the reply")
        await pilot.pause()

        assert session.tools_seen == [[{"name": "add", "parameters": {"type": "object"}}]]
        log = app.query_one("#chat-log-0", ChatLog)
        assert log.reply_text == "Calling add." and log.raw_text == REPLY
        reasoning = log.query(".reasoning")
        assert len(reasoning) == 1 and str(log.query_one(".reasoning-text").render()) == "add them — 2 und 3"
        calls = [str(w.render()) for w in log.query(".tool-call")]
        assert calls == ['tool call: add({"a": 2, "b": 3})']
        children = list(log.children)
        assert children.index(reasoning.first()) < children.index(log.query_one(".assistant"))
        assert "add them" not in json.dumps(session.history)
        await pilot.press("ctrl+y")
        assert app.clipboard == "Calling add."

        pane.send("/tools off")
        await pilot.press(*"again", "enter")
        await until(pilot, lambda: not pane.busy, what="the second reply")
        assert session.tools_seen[-1] is None


def test_terminal_chat_prints_reasoning_dim_and_the_call() -> None:
    """Guards against the terminal chat printing <think>/<tool_call> tags and reasoning inline with the
    answer."""
    console = Console(record=True, width=100, force_terminal=True, color_system="standard")
    parser = print_reply(console, iter(PIECES))
    text = console.export_text(styles=False, clear=False)
    assert text == 'thinking: add them — 2 und 3\nCalling add.\ntool call: add({"a": 2, "b": 3})\n'
    styled = console.export_text(styles=True)
    assert "\x1b[2m" in styled.split("Calling")[0]  # the reasoning is dim
    assert parser.answer == "Calling add."


def test_tools_command_sets_and_clears_specs(tmp_path: Path) -> None:
    """Guards against /tools with a bad file wiping the specs already set, or an error without the file name."""
    session = ScriptedSession()
    ok, line = tools_command(f" {tools_file(tmp_path)}", session)
    assert ok and "add" in line and session.tools == [{"name": "add", "parameters": {"type": "object"}}]
    (tmp_path / "bad.json").write_text("{")
    ok, line = tools_command(str(tmp_path / "bad.json"), session)
    assert not ok and "bad.json" in line and session.tools is not None
    assert tools_command("", session) == (True, "(tools: add)")
    assert tools_command("off", session) == (True, "(tools off)") and session.tools is None
