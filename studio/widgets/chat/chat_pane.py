"""The Chat tab: talk to any checkpoint of any run, one or two side by side, replies streamed.

The model (torch) is loaded inside a thread worker on first use; the worker iterates
ChatSession.reply and posts each text piece, checking a stop flag between pieces, so the UI never
waits on generation. With two checkpoints, the same prompt goes to both at the same seed.
A reply's tool call is answered with `/result TEXT|@FILE`: the result joins each column whose last reply
waits for one, and once none waits the model goes on (ChatSession.continue_reply).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Input, Select, Static

from engine.api.chat import read_tool_specs
from engine.errors import ToolSpecError
from studio.chat_console import call_labels, result_command, tool_names
from studio.checkpoint_list import list_checkpoint_choices
from studio.display import reply_note
from studio.inert import inert
from studio.messages import ChatDone, ChatPiece, ChatReady, ChatStart
from studio.paths import display_path
from studio.widgets.chat.chat_log import ChatLog
from studio.widgets.chat.chat_settings import ChatSettings
from studio.widgets.pane import Pane

HELP = ("Enter: send · /clear · /system TEXT · /tools FILE|off · /result TEXT|@FILE · /think on|off · "
        "/load PATH · esc/^c stop · ^l clear · ^y copy")


@dataclass(frozen=True)
class Ask:
    """What a worker asks its session: `text` from the user, or None to go on after tool results; the
    settings as read on the UI thread."""

    text: str | None
    sampling: dict[str, Any]
    system: str | None
    tools: list[dict[str, Any]] | None
    thinking: bool


class ChatPane(Pane):
    DEFAULT_FOCUS = "#chat-input"
    BINDINGS = [
        Binding("ctrl+s", "stop", "Stop"),
        # While a reply streams, escape and ctrl+c stop it, before the field under the cursor copies (ctrl+c) or
        # is left (escape): priority, or the focused Input would take the key. With no reply they pass on.
        Binding("escape,ctrl+c", "stop_reply", "Stop the reply", show=False, priority=True),
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
        yield ChatSettings()
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

    @property
    def settings(self) -> ChatSettings:
        return self.query_one(ChatSettings)

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
        if stripped.startswith("/think"):
            self.set_thinking(stripped.removeprefix("/think").strip())
            return
        if stripped.startswith("/result"):
            self.give_result(stripped.removeprefix("/result"))
            return
        if stripped.startswith("/load"):
            self.overrides[0] = Path(stripped.removeprefix("/load").strip()).expanduser()
            self.query_one("#chat-log-0", ChatLog).add_note(f"checkpoint: {self.overrides[0]}")
            return
        columns = self.columns()
        if not columns:
            self.notify("no checkpoint yet: train a run first (or /load PATH)", severity="warning")
            return
        if not self.free():
            return
        ask = self.ask(text, sharing=len(columns) > 1)
        if ask is None:
            return
        for column in columns:
            self.query_one(f"#chat-log-{column}", ChatLog).add_user(text)
        self.start(columns, ask)

    def free(self) -> bool:
        if self.busy:
            self.notify("a reply is still streaming (escape or ctrl+c stops it)", severity="warning")
        return not self.busy

    def refuse(self, line: str, title: str = "") -> None:
        """An error naming what the user gave (a file, a field's value): shown as text, never as markup."""
        self.notify(inert(line), title=title, severity="error", markup=False)

    def ask(self, text: str | None, sharing: bool) -> Ask | None:
        """The settings read for one send (None, with the reason shown, when a field is wrong)."""
        settings = self.settings
        try:
            sampling = {**settings.sampling_values(), "seed": settings.seed(sharing)}
        except ValueError as error:
            self.refuse(f"sampling settings: {error}")
            return None
        try:
            tools = settings.tool_specs()
        except ToolSpecError as error:
            self.refuse(str(error), title="tools")
            return None
        return Ask(text, sampling, settings.system, tools, settings.thinking)

    def start(self, columns: list[int], ask: Ask) -> None:
        self.stop_flag.clear()
        epoch = self.epoch
        for column in columns:
            self.busy.add(column)
            path = self.checkpoint(column)
            self.run_worker(lambda c=column, p=path: self._reply(c, p, ask, epoch),
                            thread=True, exclusive=True, exit_on_error=False, group=f"chat-{column}",
                            name=f"chat with {path}")
        self.query_one("#chat-status", Static).update("generating… escape or ctrl+c stops")

    def give_result(self, argument: str) -> None:
        """`/result TEXT|@FILE`: the result of the waiting tool call in each column that has one (on the UI
        thread: no worker runs, so the sessions are at rest); the model goes on where none waits any more."""
        if not self.free():
            return
        waiting = {c: s for c in self.columns() if (s := self.resting_session(c)) is not None and s.pending_calls()}
        if not waiting:
            self.notify("no tool call to answer: the model's last reply called no tool (a result answers a "
                        "'tool call: ...' line, before the next message)", title="result", severity="error")
            return
        ask = self.ask(None, sharing=len(waiting) > 1)
        if ask is None:
            return
        go = []
        for column, session in waiting.items():
            call = call_labels(session.pending_calls()[:1])[0]
            outcome, line = result_command(argument, session)
            if outcome == "refused":
                self.refuse(line, title="result")
                return  # the same argument fails in every column (an unreadable file)
            log = self.query_one(f"#chat-log-{column}", ChatLog)
            log.add_tool_result(call, session.history[-1]["content"], continues=outcome == "go")
            if outcome == "go":
                go.append(column)
            else:
                log.add_note(line)
        if go:
            self.start(go, ask)

    def resting_session(self, column: int) -> Any:
        """The column's session when it holds the column's checkpoint (else None: nothing asked it yet)."""
        return self.sessions.get(column) if self.loaded.get(column) == self.checkpoint(column) else None

    def set_thinking(self, argument: str) -> None:
        """`/think on|off` flips the thinking switch (it reaches templates with enable_thinking only)."""
        if argument not in ("on", "off"):
            self.notify("/think on or /think off", title="thinking", severity="warning")
            return
        self.settings.thinking = argument == "on"
        self.query_one("#chat-log-0", ChatLog).add_note(
            f"thinking {argument} (for templates with enable_thinking, from the next reply on)")

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
            self.refuse(str(error), title="tools")
            return
        field.value = argument
        log.add_note(f"tools: {', '.join(tool_names(specs))} (offered in the system turn)")

    def _session(self, column: int, path: Path, epoch: int) -> Any:
        """The column's ChatSession for `path`, loaded on first use (worker thread: torch imports here)."""
        if self.loaded.get(column) != path:
            from engine.api.chat import open_chat

            session = open_chat(path, self.studio_app.runs_dir, device=self.device)
            self.sessions[column], self.loaded[column] = session, path
            ckpt = session.checkpoint
            self.post_message(ChatReady(column, Path(ckpt.path), ckpt.step, session.mode, epoch, session.takes_thinking))
        return self.sessions[column]

    def _reply(self, column: int, path: Path, ask: Ask, epoch: int = 0) -> None:
        try:
            from engine.api.chat import Sampling  # torch: only ever loaded here, in the worker

            session = self._session(column, path, epoch)
            session.system_prompt, session.tools = ask.system, ask.tools
            session.thinking = ask.thinking if session.takes_thinking else None
            started, pieces, stopped = time.monotonic(), [], False
            sampling = Sampling(**ask.sampling)
            stream = session.reply(ask.text, sampling) if ask.text is not None else session.continue_reply(sampling)
            self.post_message(ChatStart(column, stream.start, epoch))
            if stream.notice:  # oldest messages dropped (or the message cut) to fit the model's context
                self.app.call_from_thread(self.notify, stream.notice, severity="warning")
            try:
                for piece in stream:
                    pieces.append(piece)
                    self.post_message(ChatPiece(column, piece, epoch))
                    if self.stop_flag.is_set():  # checked after showing: history == what the user saw
                        stopped = True
                        break
            finally:
                stream.close()  # the session keeps the partial answer in its history
            self.post_message(ChatDone(column, stopped, len(pieces), time.monotonic() - started, epoch,
                                       stream.reasoning_tokens))
        except BaseException:
            self.post_message(ChatDone(column, True, 0, 0.0, epoch))
            raise

    # ---- messages from the workers

    def on_chat_ready(self, message: ChatReady) -> None:
        if message.epoch != self.epoch:
            return  # the conversation it was loaded for was cleared; the session stays loaded
        mode = "chat (SFT)" if message.mode == "chat" else "plain continuation (pretrain checkpoint)"
        if message.thinking_switch:
            mode += f" · thinking {'on' if self.settings.thinking else 'off'} (its template takes enable_thinking)"
        log = self.query_one(f"#chat-log-{message.column}", ChatLog)
        log.add_note(f"loaded {display_path(message.path)} step {message.step}: {mode}", before_turn=True)

    def on_chat_start(self, message: ChatStart) -> None:
        if message.epoch == self.epoch:
            self.query_one(f"#chat-log-{message.column}", ChatLog).begin_reply(message.start)

    def on_chat_piece(self, message: ChatPiece) -> None:
        if message.epoch != self.epoch:
            return  # in flight when the chat was cleared
        self.query_one(f"#chat-log-{message.column}", ChatLog).add_piece(message.text)

    def on_chat_done(self, message: ChatDone) -> None:
        self.busy.discard(message.column)  # the worker is done whichever conversation it was in
        if message.epoch == self.epoch:
            log = self.query_one(f"#chat-log-{message.column}", ChatLog)
            log.end_reply(reply_note(message.pieces, message.seconds, message.stopped), message.reasoning_tokens)
        if not self.busy:
            self.query_one("#chat-status", Static).update(HELP)

    # ---- actions

    def action_stop(self) -> None:
        if self.busy:
            self.stop_flag.set()

    def action_stop_reply(self) -> None:
        """escape / ctrl+c: stop the streaming reply (the chat stays, the partial turn is kept); with none,
        the key does what it does elsewhere (leave the field, copy; ctrl+c never quits the studio)."""
        if not self.busy:
            raise SkipAction()
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
