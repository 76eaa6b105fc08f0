"""Clearing the Chat tab while a reply streams, with a real (very small) checkpoint and the pilot."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.message import Message
from textual.widgets import Input

from engine.chat.reply import ReplyStream
from studio.app import StudioApp
from studio.messages import ChatDone, ChatPiece
from studio.widgets.chat.chat_log import ChatLog
from studio.widgets.chat.chat_pane import ChatPane
from tests.support.wait import ready, until


def hold_after(session, pieces: int, gate: threading.Event):
    """session.reply, paused in the worker thread after `pieces` pieces until `gate` is set."""
    real_reply = session.reply

    def held_reply(text, sampling=None):
        stream = real_reply(text, sampling)

        def held():
            try:
                for index, piece in enumerate(stream):
                    if index == pieces:
                        gate.wait(30)
                    yield piece
            finally:
                stream.close()  # the real generator's `finally` decides what joins the history

        return ReplyStream(held(), stream.start)

    return held_reply


async def test_clear_mid_reply_leaves_an_empty_chat_and_the_next_question_works(
        trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against the bug where ctrl+l during a streaming reply left a cleared chat that was not
    empty: the reply's generator, finishing after the clear, put the question and its partial answer
    back into the session's history, and pieces still in flight landed in the cleared log. The order
    is forced: two pieces shown, clear, then the held worker goes on and its generator finishes."""
    posted: list[Message] = []
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32), message_hook=posted.append) as pilot:
        await ready(pilot)
        await pilot.press("5")
        pane = app.query_one(ChatPane)
        for field, value in (("seed", "3"), ("max_new_tokens", "24"), ("temperature", "1.0")):
            pane.query_one(f"#s-{field}", Input).value = value
        await pilot.press(*"hi", "enter")  # loads the checkpoint; a first, uncut reply
        await until(pilot, lambda: not pane.busy, timeout=60, what="the first reply")
        session = pane.sessions[0]
        assert session.mode == "chat" and len(session.history) == 2
        await pilot.press("ctrl+l")
        await pilot.pause()
        log = app.query_one("#chat-log-0", ChatLog)
        assert session.history == [] and not log.children

        session.stop_ids = set()  # no early end of text: the reply is long enough to be cut
        gate = threading.Event()
        monkeypatch.setattr(session, "reply", hold_after(session, 2, gate))
        await pilot.press(*"tell me a story", "enter")
        await until(pilot, lambda: log.pieces >= 2, timeout=60, what="two pieces of the reply")
        old_epoch, cleared_at = pane.epoch, len(posted)
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert session.history == [] and not log.children and log.raw_text == ""

        gate.set()  # the worker goes on: a piece of the old conversation arrives, its generator finishes
        await until(pilot, lambda: not pane.busy, timeout=60, what="the cut reply to end")
        late = [m for m in posted[cleared_at:] if isinstance(m, ChatPiece) and m.epoch == old_epoch]
        assert late, "no piece arrived after the clear: the test did not reproduce the order"
        assert any(isinstance(m, ChatDone) and m.epoch == old_epoch for m in posted[cleared_at:])
        assert session.history == [] and not log.children and log.raw_text == ""

        await pilot.press(*"hello", "enter")  # the next question is a fresh conversation
        await until(pilot, lambda: not pane.busy, timeout=60, what="the next reply")
        assert [turn["role"] for turn in session.history] == ["user", "assistant"]
        assert session.history[0]["content"] == "hello"
        users = [str(w.render()) for w in log.query(".user")]
        assert users == ["hello"] and log.reply_text == session.history[1]["content"]
