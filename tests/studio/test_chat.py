"""Chat with a real (very small) checkpoint: streamed piece by piece from a worker; errors in a modal."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message
from textual.widgets import Input, Select

from engine.chat.reply import ReplyStream, parse_reply
from studio.app import StudioApp
from studio.messages import ChatDone, ChatPiece
from studio.screens.error_modal import ErrorModal
from studio.widgets.chat.chat_log import ChatLog
from studio.widgets.chat.chat_pane import ChatPane
from tests.support.wait import ready, until


async def open_chat(pilot, seed: str = "3", max_tokens: str = "12") -> ChatPane:
    await ready(pilot)
    await pilot.press("5")
    pane = pilot.app.query_one(ChatPane)
    pane.query_one("#s-seed", Input).value = seed
    pane.query_one("#s-max_new_tokens", Input).value = max_tokens
    pane.query_one("#s-temperature", Input).value = "1.0"
    return pane


async def test_reply_streams_piece_by_piece(trained_run: Path) -> None:
    """Guards against a chat that blocks the UI until the whole answer exists, or that loses pieces
    between the worker thread and the log."""
    posted: list[Message] = []
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32), message_hook=posted.append) as pilot:
        pane = await open_chat(pilot)
        choice = pane.query_one("#ckpt-0", Select).value
        assert str(choice).endswith("sft/latest")  # SFT first: chat-ready
        await pilot.press(*"hello", "enter")
        await until(pilot, lambda: any(isinstance(m, ChatDone) for m in posted), timeout=60, what="the reply")
        unique = list({id(m): m for m in posted}.values())  # the hook sees a bubbling message at each node
        pieces = [m.text for m in unique if isinstance(m, ChatPiece) and m.column == 0]
        log = app.query_one("#chat-log-0", ChatLog)
        assert len(pieces) >= 2, pieces
        assert log.raw_text == "".join(pieces) and log.pieces == len(pieces)
        notes = " ".join(str(w.render()) for w in log.query(".note"))
        assert "chat (SFT)" in notes
        assert pane.sessions[0].history[-1]["content"] == log.reply_text
        await pilot.press("ctrl+y")
        assert app.clipboard == log.reply_text


async def test_side_by_side_uses_one_seed_and_errors_open_a_modal(trained_run: Path) -> None:
    """Guards against side-by-side replies sampled with different seeds (not comparable), and against a
    failing worker (a bad checkpoint path) killing the app instead of showing the error."""
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(120, 36)) as pilot:
        pane = await open_chat(pilot, seed="")  # no seed typed: one random seed is shared
        first = pane.query_one("#ckpt-0", Select).value
        pane.query_one("#ckpt-1", Select).value = first
        await pilot.pause()
        assert pane.columns() == [0, 1] and not app.query_one("#chat-log-1").has_class("hidden")
        # The shared seed is drawn at random, so a reply may be empty (an end-of-text token sampled first): ask
        # again until one says something; every pair must agree.
        for prompt in ("once upon", "the cat", "tell me"):
            await pilot.press(*prompt, "enter")
            await until(pilot, lambda: not pane.busy, timeout=60, what="both replies")
            left, right = (app.query_one(f"#chat-log-{c}", ChatLog).reply_text for c in (0, 1))
            assert left == right
            if left:
                break
        assert left, "three replies in a row were empty"

        pane.query_one("#ckpt-1", Select).clear()
        await pilot.press(*"/load /no/such/checkpoint", "enter", *"hi", "enter")
        await until(pilot, lambda: isinstance(app.screen, ErrorModal), timeout=30, what="the error modal")
        assert "no checkpoint found" in app.screen.message
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ErrorModal) and not pane.busy  # the app lives on


class EndlessSession:
    """Stands in for engine.chat.session.ChatSession: an answer that never ends unless stopped."""

    mode = "chat"
    takes_thinking = False

    def __init__(self) -> None:
        self.history: list[dict[str, str]] = []
        self.system_prompt = None

    def reply(self, text, sampling) -> ReplyStream:
        """Like ChatSession.reply: endless, and a stopped turn is kept in the history."""
        return ReplyStream(self._pieces(text))

    def _pieces(self, text):
        import time

        pieces = []
        try:
            while True:
                time.sleep(0.01)  # a model's pace, not a wait: without it the stand-in floods the UI
                pieces.append("la ")
                yield "la "
        finally:
            said = parse_reply("".join(pieces)).assistant_message()
            self.history += [{"role": "user", "content": text}, said]

    def clear(self) -> None:
        self.history.clear()


async def test_stop_ends_a_streaming_reply_and_keeps_the_partial_turn(trained_run: Path) -> None:
    """Guards against a stop key that the worker never checks (generation runs to max tokens with the
    UI saying 'stopped'), and against the stopped turn vanishing from the conversation."""
    posted: list[Message] = []
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32), message_hook=posted.append) as pilot:
        pane = await open_chat(pilot)
        path = pane.checkpoint(0)
        pane.sessions[0], pane.loaded[0] = EndlessSession(), path  # already "loaded": no torch needed
        await pilot.press(*"sing", "enter")
        log = app.query_one("#chat-log-0", ChatLog)
        await until(pilot, lambda: log.pieces >= 3, what="some pieces")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not pane.busy, what="the stop")
        done = next(m for m in posted if isinstance(m, ChatDone))
        assert done.stopped and done.pieces == log.pieces
        assert pane.sessions[0].history == [{"role": "user", "content": "sing"}, {"role": "assistant", "content": log.reply_text}]
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert pane.sessions[0].history == [] and log.reply_text == ""
