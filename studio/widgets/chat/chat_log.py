"""One conversation column: user turns and streamed replies, scrolled to the newest."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static


class ChatLog(VerticalScroll):
    def __init__(self, column: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.column = column
        self.reply_text = ""  # the reply being streamed (or the last one)
        self.pieces = 0
        self._reply: Static | None = None
        self._user: Static | None = None

    def add_user(self, text: str) -> None:
        self._user = Static(Text(text), classes="msg user")
        self.mount(self._user)
        self._reply = Static("", classes="msg assistant")
        self.reply_text, self.pieces = "", 0
        self.mount(self._reply)
        self.scroll_end(animate=False)

    def add_piece(self, text: str) -> None:
        if self._reply is None:
            return
        self.reply_text += text
        self.pieces += 1
        self._reply.update(Text(self.reply_text))
        self.scroll_end(animate=False)

    def end_reply(self, note: str) -> None:
        if self._reply is not None and note:
            self.mount(Static(Text(note, style="dim"), classes="msg note"))
            self.scroll_end(animate=False)

    def add_note(self, text: str, before_turn: bool = False) -> None:
        """A dim line; before_turn puts it above the turn being answered (e.g. 'loaded checkpoint')."""
        note = Static(Text(text, style="dim italic"), classes="msg note")
        if before_turn and self._user is not None:
            self.mount(note, before=self._user)
        else:
            self.mount(note)
        self.scroll_end(animate=False)

    def clear(self) -> None:
        self.remove_children()
        self._reply, self._user, self.reply_text, self.pieces = None, None, "", 0
