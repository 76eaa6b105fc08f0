"""One conversation column: user turns, tool results and streamed replies, scrolled to the newest.

A reply is split as it streams (engine.chat.reply, pure Python): reasoning in a dim block above the answer,
each tool call in its own line below it, so thinking never reads as the answer. The reasoning block is a
Collapsible: open while the reply streams, folded to "reasoning (N tokens)" once it is done (click or
enter on its title opens it again).
Every line shown is a rich Text (never markup) of studio.inert's output: what a model, a tool result
or a tools file writes cannot clear the screen, move the cursor or retitle the terminal (see `shown`).
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Collapsible, Static

from engine.api.chat import Kind, ReplyParser, ToolCall
from studio.inert import inert


def shown(text: str, style: str = "") -> Text:
    """Text as the log shows it: control characters and escape sequences as visible stand-ins."""
    return Text(inert(text), style=style)


class ChatLog(VerticalScroll):
    def __init__(self, column: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.column = column
        self.reply_text = ""  # the answer being streamed (or the last one), without reasoning or calls
        self.raw_text = ""  # every piece as the model wrote it
        self.pieces = 0
        self.parser = ReplyParser()
        self._reply: Static | None = None
        self._reasoning: Collapsible | None = None
        self._reasoning_text = Static("", classes="reasoning-text")  # inside _reasoning
        self._user: Static | None = None

    def add_user(self, text: str) -> None:
        self._user = Static(shown(text), classes="msg user")
        self.mount(self._user)
        self.start_reply()

    def add_tool_result(self, call: str, content: str, continues: bool) -> None:
        """The user's answer to the model's call `call` (its label); `continues` when the model goes on now."""
        self.mount(Static(Text.assemble(("tool result ", "bold magenta"), shown(call, "magenta"), ": ", shown(content)),
                          classes="msg tool-result"))
        if continues:
            self.start_reply()
        else:
            self.scroll_end(animate=False)

    def start_reply(self) -> None:
        """An empty reply under the last turn; begin_reply says where it starts once the stream knows."""
        self._reply = Static("", classes="msg assistant")
        self._reasoning = None
        self.reply_text, self.raw_text, self.pieces, self.parser = "", "", 0, ReplyParser()
        self.mount(self._reply)
        self.scroll_end(animate=False)

    def begin_reply(self, start: Kind) -> None:
        """The stream's first word: where the reply starts (inside reasoning when the prompt opened `<think>`)."""
        if self._reply is not None and not self.pieces:
            self.parser = ReplyParser(start=start)

    def add_piece(self, text: str) -> None:
        if self._reply is None:
            return
        self.raw_text += text
        self.pieces += 1
        self._show(self.parser.feed(text))

    def _show(self, events: list) -> None:
        if self._reply is None:
            return
        for event in events:
            if isinstance(event, ToolCall):
                label = Text.assemble(("tool call: ", "bold magenta"), shown(event.label()))
                self.mount(Static(label, classes="msg tool-call"))
            elif event[0] == "reasoning":
                if self._reasoning is None:
                    self._reasoning_text = Static("", classes="reasoning-text")
                    self._reasoning = Collapsible(self._reasoning_text, title="reasoning…", collapsed=False,
                                                  classes="msg reasoning")
                    self.mount(self._reasoning, before=self._reply)
                self._reasoning_text.update(shown(self.parser.reasoning, "dim"))
        if self.parser.answer != self.reply_text:
            self.reply_text = self.parser.answer
            self._reply.update(shown(self.reply_text))
        self.scroll_end(animate=False)

    def end_reply(self, note: str, reasoning_tokens: int = 0) -> None:
        self._show(self.parser.finish())  # what was held back in case a tag was forming
        if self._reasoning is not None:  # done thinking: fold it, the answer is what is read now
            self._reasoning.title = f"reasoning ({reasoning_tokens} tokens)" if reasoning_tokens else "reasoning"
            self._reasoning.collapsed = True
        if self._reply is not None and note:
            self.mount(Static(shown(note, "dim"), classes="msg note"))
            self.scroll_end(animate=False)

    def add_note(self, text: str, before_turn: bool = False) -> None:
        """A dim line; before_turn puts it above the turn being answered (e.g. 'loaded checkpoint')."""
        note = Static(shown(text, "dim italic"), classes="msg note")
        if before_turn and self._user is not None:
            self.mount(note, before=self._user)
        else:
            self.mount(note)
        self.scroll_end(animate=False)

    def clear(self) -> None:
        self.remove_children()
        self._reply, self._reasoning, self._user = None, None, None
        self.reply_text, self.raw_text, self.pieces, self.parser = "", "", 0, ReplyParser()
