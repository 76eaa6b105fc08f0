"""The Chat tab: talk to any checkpoint of any run, one or two side by side, replies streamed.

The model (torch) is loaded inside a thread worker on first use; the worker iterates
ChatSession.reply and posts each text piece, checking a stop flag between pieces, so the UI never
waits on generation. With two checkpoints, the same prompt goes to both at the same seed.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Collapsible, Input, Label, Select, Static

from engine.chat.reply import ToolSpecError, read_tool_specs
from studio.chat_console import tool_names
from studio.checkpoint_list import list_checkpoint_choices
from studio.messages import ChatDone, ChatPiece, ChatReady
from studio.paths import display_path
from studio.widgets.chat.chat_log import ChatLog
from studio.widgets.pane import Pane

SAMPLING_FIELDS = (  # id, label, default, type
    ("temperature", "temp", "0.7", float), ("top_p", "top-p", "0.9", float), ("top_k", "top-k", "0", int),
    ("repetition_penalty", "rep", "1.1", float), ("max_new_tokens", "max tok", "256", int), ("seed", "seed", "", int),
)
HELP = ("Enter: send · /clear · /system TEXT · /tools FILE|off · /load PATH (any checkpoint or HF dir) · "
        "^s stop · ^l clear · ^y copy")


class ChatPane(Pane):
    DEFAULT_FOCUS = "#chat-input"
    BINDINGS = [
        Binding("ctrl+s", "stop", "Stop"),
        Binding("ctrl+l", "clear", "Clear"),
        Binding("ctrl+y", "copy", "Copy reply"),
    ]

    def __init__(self, device: str = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device = device
        self.sessions: dict[int, Any] = {}  # column -> ChatSession (touched only by that column's worker)
        self.loaded: dict[int, Path] = {}  # column -> checkpoint path the session holds
        self.stop_flag = threading.Event()
        self.busy: set[int] = set()
        self.overrides: dict[int, Path] = {}  # column -> a path given with /load
        self.choices: dict[str, list[tuple[str, str]]] = {}  # what each checkpoint menu lists now
        # The conversation's generation, bumped by a clear. Workers tag what they post with the epoch they
        # were started in; pieces of a cleared conversation still in flight are dropped, not shown.
        self.epoch = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="chat-pickers"):
            yield Select([], prompt="checkpoint…", id="ckpt-0", compact=True)
            yield Select([], prompt="side by side: off", id="ckpt-1", compact=True)
        with Collapsible(title="sampling & system prompt", collapsed=True, id="chat-settings"):
            with Horizontal(id="chat-sampling"):
                for ident, label, default, _ in SAMPLING_FIELDS:
                    yield Label(label)
                    yield Input(default, id=f"s-{ident}", classes="num", placeholder="random" if ident == "seed" else "",
                                compact=True)
            yield Input(placeholder="system prompt (SFT checkpoints)", id="s-system", compact=True)
            yield Input(placeholder="tools: a JSON file of function specs, offered in the system turn (/tools FILE)",
                        id="s-tools", compact=True)
        with Horizontal(id="chat-columns"):
            yield ChatLog(0, id="chat-log-0", classes="chat-log")
            yield ChatLog(1, id="chat-log-1", classes="chat-log hidden")
        yield Input(placeholder="message… (Enter to send)", id="chat-input")
        yield Static(HELP, id="chat-status")

    def on_mount(self) -> None:
        self.refresh_choices()
        if not self.columns():
            self.query_one("#chat-log-0", ChatLog).add_note(
                f"no checkpoints under {display_path(self.studio_app.runs_dir)}/ yet: train a run (1 Presets), or /load PATH")

    def on_unmount(self) -> None:
        # Quitting mid-reply: asyncio waits for worker threads at exit, so make the reply end now.
        self.stop_flag.set()

    def focus_default(self) -> None:
        self.refresh_choices()
        super().focus_default()

    def refresh_choices(self) -> None:
        choices = [(c.label, str(c.path)) for c in list_checkpoint_choices(self.studio_app.runs_dir)]
        for ident in ("#ckpt-0", "#ckpt-1"):
            select = self.query_one(ident, Select)
            current = select.value
            if self.choices.get(ident) == choices:
                continue  # unchanged: leave the menu (and its selection) alone
            with self.prevent(Select.Changed):  # a refreshed list is not the user choosing
                select.set_options(choices)
                self.choices[ident] = choices
                if current is not Select.NULL and any(value == current for _, value in choices):
                    select.value = current
                elif ident == "#ckpt-0" and choices:
                    select.value = choices[0][1]

    # ---- which checkpoints

    def checkpoint(self, column: int) -> Path | None:
        if column in self.overrides:
            return self.overrides[column]
        value = self.query_one(f"#ckpt-{column}", Select).value
        return None if value is Select.NULL else Path(str(value))

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id in ("ckpt-0", "ckpt-1"):
            column = int(event.select.id[-1])
            self.overrides.pop(column, None)
            if column == 1:
                self.query_one("#chat-log-1").set_class(self.checkpoint(1) is None, "hidden")

    def columns(self) -> list[int]:
        return [c for c in (0, 1) if self.checkpoint(c) is not None]

    # ---- sending

    def sampling_values(self) -> dict[str, Any]:
        """engine.model.generate.Sampling fields read from the inputs (on the UI thread; workers get the dict)."""
        values: dict[str, Any] = {}
        for ident, label, default, kind in SAMPLING_FIELDS:
            if ident == "seed":
                continue
            text = self.query_one(f"#s-{ident}", Input).value.strip()
            try:
                values[ident] = kind(text or default)
            except ValueError:
                raise ValueError(f"{label}: {text!r} is not a number") from None
        return values

    def seed(self, sharing: bool) -> int | None:
        text = self.query_one("#s-seed", Input).value.strip()
        if text:
            return int(text)
        return random.randrange(2**31) if sharing else None  # side by side: one seed for both

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "chat-input":
            return
        text = event.value
        event.input.value = ""
        self.send(text)

    def send(self, text: str) -> None:
        stripped = text.strip()
        if not stripped:
            return
        if stripped == "/clear":
            self.action_clear()
            return
        if stripped.startswith("/system"):
            self.query_one("#s-system", Input).value = stripped.removeprefix("/system").strip()
            self.action_clear()
            return
        if stripped.startswith("/tools"):
            self.set_tools(stripped.removeprefix("/tools").strip())
            return
        if stripped.startswith("/load"):
            self.overrides[0] = Path(stripped.removeprefix("/load").strip()).expanduser()
            self.query_one("#chat-log-0", ChatLog).add_note(f"checkpoint: {self.overrides[0]}")
            return
        columns = self.columns()
        if not columns:
            self.notify("no checkpoint yet: train a run first (or /load PATH)", severity="warning")
            return
        if self.busy:
            self.notify("a reply is still streaming (ctrl+s stops it)", severity="warning")
            return
        try:
            seed = self.seed(sharing=len(columns) > 1)
            sampling = {**self.sampling_values(), "seed": seed}
        except ValueError as error:
            self.notify(f"sampling settings: {error}", severity="error")
            return
        try:
            tools = self.tool_specs()
        except ToolSpecError as error:
            self.notify(str(error), title="tools", severity="error")
            return
        system = self.query_one("#s-system", Input).value.strip() or None
        self.stop_flag.clear()
        epoch = self.epoch
        for column in columns:
            self.query_one(f"#chat-log-{column}", ChatLog).add_user(text)
            self.busy.add(column)
            path = self.checkpoint(column)
            self.run_worker(lambda c=column, p=path: self._reply(c, p, text, sampling, system, tools, epoch),
                            thread=True, exclusive=True, exit_on_error=False, group=f"chat-{column}",
                            name=f"chat with {path}")
        self.query_one("#chat-status", Static).update("generating… ctrl+s stops")

    def tool_specs(self) -> list[dict[str, Any]] | None:
        """The specs in the tools field's file, read at each send so an edited file counts (UI thread: it is small)."""
        path = self.query_one("#s-tools", Input).value.strip()
        return read_tool_specs(path) if path else None

    def set_tools(self, argument: str) -> None:
        """`/tools FILE` fills the tools field once the file reads as specs; `/tools off` empties it."""
        field, log = self.query_one("#s-tools", Input), self.query_one("#chat-log-0", ChatLog)
        if argument in ("", "off", "none"):
            field.value = ""
            log.add_note("tools off")
            return
        try:
            specs = read_tool_specs(argument)
        except ToolSpecError as error:
            self.notify(str(error), title="tools", severity="error")
            return
        field.value = argument
        log.add_note(f"tools: {', '.join(tool_names(specs))} (offered in the system turn)")

    def _session(self, column: int, path: Path, epoch: int) -> Any:
        """The column's ChatSession for `path`, loaded on first use (worker thread: torch imports here)."""
        if self.loaded.get(column) != path:
            from engine.chat.session import ChatSession

            session = ChatSession.open(str(path), str(self.studio_app.runs_dir), device=self.device)
            self.sessions[column], self.loaded[column] = session, path
            ckpt = session.checkpoint
            self.post_message(ChatReady(column, Path(ckpt.path), ckpt.step, session.mode, epoch))
        return self.sessions[column]

    def _reply(self, column: int, path: Path, text: str, sampling: dict[str, Any], system: str | None,
               tools: list[dict[str, Any]] | None = None, epoch: int = 0) -> None:
        try:
            from engine.model.generate import (
                Sampling,  # torch: only ever imported here, in the worker
            )

            session = self._session(column, path, epoch)
            session.system_prompt, session.tools = system, tools
            started, pieces, stopped = time.monotonic(), [], False
            stream = session.reply(text, Sampling(**sampling))
            try:
                for piece in stream:
                    pieces.append(piece)
                    self.post_message(ChatPiece(column, piece, epoch))
                    if self.stop_flag.is_set():  # checked after showing: history == what the user saw
                        stopped = True
                        break
            finally:
                stream.close()  # the session keeps the partial answer in its history
            self.post_message(ChatDone(column, stopped, len(pieces), time.monotonic() - started, epoch))
        except BaseException:
            self.post_message(ChatDone(column, True, 0, 0.0, epoch))
            raise

    # ---- messages from the workers

    def on_chat_ready(self, message: ChatReady) -> None:
        if message.epoch != self.epoch:
            return  # the conversation it was loaded for was cleared; the session stays loaded
        mode = "chat (SFT)" if message.mode == "chat" else "plain continuation (pretrain checkpoint)"
        log = self.query_one(f"#chat-log-{message.column}", ChatLog)
        log.add_note(f"loaded {display_path(message.path)} step {message.step}: {mode}", before_turn=True)

    def on_chat_piece(self, message: ChatPiece) -> None:
        if message.epoch != self.epoch:
            return  # in flight when the chat was cleared
        self.query_one(f"#chat-log-{message.column}", ChatLog).add_piece(message.text)

    def on_chat_done(self, message: ChatDone) -> None:
        self.busy.discard(message.column)  # the worker is done whichever conversation it was in
        if message.epoch == self.epoch:
            log = self.query_one(f"#chat-log-{message.column}", ChatLog)
            rate = message.pieces / message.seconds if message.seconds > 0 else 0.0
            note = f"{'stopped · ' if message.stopped else ''}{message.pieces} pieces · {rate:.1f}/s" if message.pieces else ""
            log.end_reply(note)
        if not self.busy:
            self.query_one("#chat-status", Static).update(HELP)

    # ---- actions

    def action_stop(self) -> None:
        if self.busy:
            self.stop_flag.set()

    def action_clear(self) -> None:
        """A new conversation: empty logs and histories. A reply still streaming is stopped, its pieces in
        flight are dropped (older epoch) and its turn does not come back (ChatSession.clear)."""
        self.epoch += 1
        self.action_stop()
        for column in (0, 1):
            self.query_one(f"#chat-log-{column}", ChatLog).clear()
            session = self.sessions.get(column)
            if session is not None:
                session.clear()

    def action_copy(self) -> None:
        replies = [self.query_one(f"#chat-log-{c}", ChatLog).reply_text for c in self.columns()]
        text = "\n\n".join(r for r in replies if r)
        if text:
            self.app.copy_to_clipboard(text)
            self.notify("reply copied")
