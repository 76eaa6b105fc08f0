"""Ctrl-C stops a reply without leaving the chat: the terminal chat (in process, and as a real process on a
pseudo-terminal with a real ^C) and the Chat tab (escape and ctrl+c under the pilot), with the shared trained
tiny model."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from functools import partial
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from textual.message import Message
from textual.widgets import Input, Tabs

import engine.chat.session
from engine.chat.session import ChatSession
from engine.model.generate import Sampling
from studio.app import StudioApp
from studio.chat_console import STOPPED, chat_turn
from studio.messages import ChatDone
from studio.widgets.chat.chat_log import ChatLog
from tests.studio.test_chat import open_chat
from tests.studio.test_chat_clear import hold_after
from tests.support.held_chat import hold_first_reply
from tests.support.wait import until, wait_until

ROOT = Path(__file__).resolve().parents[2]
HELD_CHAT = ROOT / "tests" / "support" / "held_chat.py"


def test_ctrl_c_mid_reply_keeps_the_partial_turn_and_the_chat_goes_on(trained_run: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against Ctrl-C during generation ending the chat (it used to leave with 'interrupted', status
    130), against the text the parser held back never being printed, and against the stopped turn missing
    from the history or differing from what was printed. The KeyboardInterrupt is raised inside the
    session's generator, where a long reply spends its time."""
    session = ChatSession.open(trained_run)

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.chat.session, "generate", engine.chat.session.generate)  # undone after the test
    hold_first_reply(engine.chat.session, ctrl_c)
    out = StringIO()
    console = Console(file=out, width=400)
    sampling = Sampling(temperature=1.0, max_new_tokens=60, seed=3)
    assert chat_turn(console, session, partial(session.reply, "tell me a story", sampling)) is True
    printed = out.getvalue()
    assert printed.startswith("ai> ") and printed.endswith(STOPPED + "\n")
    partial_answer = printed.removeprefix("ai> ").removesuffix("\n" + STOPPED + "\n")
    assert [turn["role"] for turn in session.history] == ["user", "assistant"]
    assert session.history[1]["content"] == partial_answer and partial_answer  # the turn is what was shown

    assert chat_turn(console, session, partial(session.reply, "and then?", sampling)) is False
    assert [turn["role"] for turn in session.history] == ["user", "assistant", "user", "assistant"]


class Terminal:
    """The master side of a pseudo-terminal whose other side is `process`'s: what it wrote, and keys typed."""

    def __init__(self, fd: int, process: subprocess.Popen) -> None:
        self.fd, self.process, self.text = fd, process, ""

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def read(self) -> str:
        """Append what the process wrote since the last read (waiting at most a moment for it)."""
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the process closed its side
                break
            if not chunk:
                break
            self.text += chunk.decode("utf-8", "replace")
        return self.text

    def expect(self, needle: str, count: int = 1, timeout: float = 60) -> None:
        """Wait until `needle` was written `count` times; fail at once if the process ends first."""
        wait_until(lambda: self.read().count(needle) >= count or self.process.poll() is not None, timeout=timeout,
                   what=f"{needle!r} x{count} in the terminal; it shows: {self.text[-600:]!r}")
        assert self.read().count(needle) >= count, (
            f"the chat exited ({self.process.returncode}) before writing {needle!r} x{count}: {self.text[-600:]!r}")


def test_terminal_chat_ctrl_c_stops_the_reply_then_leaves_at_the_prompt(trained_run: Path, tmp_path: Path) -> None:
    """Guards against a real ^C typed in the terminal mid-reply killing the chat process, against the chat
    not answering the next message after a stop, and against ^C at an empty prompt not leaving (or leaving
    with an error status). `minimind-studio chat` runs in its own session on a pseudo-terminal; its first
    reply is held inside generation (tests/support/held_chat.py) so the ^C surely lands mid-reply."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    marker = tmp_path / "held"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    chat = subprocess.Popen([sys.executable, str(HELD_CHAT), str(marker), str(trained_run), "--max-new-tokens", "60",
                             "--temperature", "1.0", "--seed", "3"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True)
    os.close(slave)
    terminal = Terminal(master, chat)
    try:
        terminal.expect("you>")
        terminal.type("tell me a story\r")
        wait_until(marker.exists, timeout=60, what="the reply to be held mid-generation")
        terminal.type("\x03")  # the terminal turns ^C into SIGINT for the chat's process group
        terminal.expect("(stopped;")
        terminal.expect("you>", count=2)
        assert chat.poll() is None, terminal.text  # still chatting
        terminal.type("hello\r")
        terminal.expect("you>", count=3)  # answered (a reply that ends by itself), prompt again
        assert terminal.text.count("ai>") == 2 and chat.poll() is None
        terminal.type("\x03")  # at the empty prompt: leave
        assert chat.wait(timeout=60) == 0, terminal.read()
        assert "Traceback" not in terminal.read() and "interrupted" not in terminal.text
    finally:
        if chat.poll() is None:
            os.killpg(chat.pid, signal.SIGKILL)
            chat.wait()
        os.close(master)


async def test_chat_tab_escape_and_ctrl_c_stop_a_reply_and_the_chat_goes_on(trained_run: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against ctrl+c mid-reply being taken by the focused message field (copy) or the app (its
    quit hint) while generation runs on, against escape leaving the field instead of stopping, against the
    studio quitting, and against the next message not working after a stop. With no reply streaming both
    keys keep their usual meaning (copy; leave the field)."""
    posted: list[Message] = []
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32), message_hook=posted.append) as pilot:
        pane = await open_chat(pilot, max_tokens="40")
        await pilot.press(*"hi", "enter")  # loads the checkpoint; a first, uncut reply
        await until(pilot, lambda: not pane.busy, timeout=60, what="the first reply")
        session = pane.sessions[0]
        session.stop_ids = set()  # no early end of text: the replies are long enough to be stopped
        real_reply = session.reply
        log = app.query_one("#chat-log-0", ChatLog)
        for key in ("ctrl+c", "escape"):
            gate = threading.Event()
            monkeypatch.setattr(session, "reply", real_reply)
            monkeypatch.setattr(session, "reply", hold_after(session, 2, gate))  # holds after two pieces
            await pilot.press(*"tell me a story", "enter")
            await until(pilot, lambda: log.pieces >= 2, timeout=60, what="two pieces of the reply")
            await pilot.press(key)
            assert pane.stop_flag.is_set(), key
            gate.set()
            await until(pilot, lambda: not pane.busy, timeout=60, what=f"the reply stopped by {key}")
            done = [m for m in posted if isinstance(m, ChatDone)][-1]
            assert done.stopped and done.pieces == 3, key  # the piece in flight when the key came, then none
            assert app.return_code is None and app.is_running
            assert isinstance(app.focused, Input) and app.focused.id == "chat-input"
            assert session.history[-1] == {"role": "assistant", "content": log.reply_text}

        monkeypatch.setattr(session, "reply", real_reply)
        await pilot.press(*"hello", "enter")
        await until(pilot, lambda: not pane.busy, timeout=60, what="the reply after the stops")
        done = [m for m in posted if isinstance(m, ChatDone)][-1]
        assert not done.stopped and done.pieces > 3 and len(session.history) == 8

        await pilot.press("ctrl+c")  # nothing streaming: the field's copy, not a stop, and no quit
        await pilot.pause()
        assert app.return_code is None and not pane.stop_flag.is_set() and isinstance(app.focused, Input)
        await pilot.press("escape")  # nothing streaming: leaves the field, as everywhere in the studio
        await pilot.pause()
        assert isinstance(app.focused, Tabs)
