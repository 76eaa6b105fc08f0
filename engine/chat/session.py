"""A chat with one checkpoint: loads model + tokenizer, keeps the history, streams replies.

A pretrain checkpoint has never seen the chat template, so it continues plain text; an SFT checkpoint
(or an imported model with a chat template) gets the conversation rendered with its template.

Tool use goes round as in minimind's data: a reply's calls join the history as the assistant turn's
`tool_calls`; the user answers each with add_tool_result (a `{"role": "tool"}` turn), and continue_reply
lets the model go on after the results. A template that takes `enable_thinking` gets the `thinking`
switch; one whose generation prompt opens `<think>` starts the reply inside reasoning (reply_start).
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from engine.chat.reply import Kind, ReplyParser, ReplyStream, reply_start
from engine.checkpoints.checkpoint import Checkpoint, load_model_weights
from engine.checkpoints.lookup import resolve_checkpoint
from engine.data.tokenizer import load_tokenizer
from engine.errors import CheckpointError, ToolResultError
from engine.hardware.device import resolve_device
from engine.model.generate import Sampling, generate, stream_text
from engine.model.transformer import CausalLM


def load_model(ckpt: Checkpoint, device: str = "cpu") -> CausalLM:
    model = CausalLM(ckpt.model_config)
    load_model_weights(model, ckpt.path)
    return model.to(resolve_device(device)).eval()


class ChatSession:
    def __init__(self, ckpt: Checkpoint, device: str = "cpu", system_prompt: str | None = None,
                 tools: list[dict[str, Any]] | None = None) -> None:
        self.checkpoint = ckpt
        self.tokenizer = load_tokenizer(ckpt.tokenizer_dir)
        vocab = ckpt.model_config.vocab_size
        if len(self.tokenizer) > vocab:  # ids past the embedding table would fail, or read another row
            raise CheckpointError(
                f"{ckpt.tokenizer_dir}: the tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary is "
                f"{vocab}; this tokenizer is not the one the model was trained with. Use the checkpoint's own "
                "tokenizer folder (a checkpoint keeps it in tokenizer/)")
        self.model = load_model(ckpt, device)
        self.mode: Literal["chat", "continue"] = "chat" if ckpt.stage != "pretrain" and self.tokenizer.chat_template else "continue"
        self.system_prompt = system_prompt
        self.tools = tools  # function specs rendered in the system turn (engine.chat.reply.read_tool_specs)
        # enable_thinking for templates that take it (takes_thinking); None leaves the template's own default.
        self.thinking: bool | None = None
        self.history: list[dict[str, Any]] = []
        self._calls_made = 0  # numbers the call ids of templates that match results to calls (tool_keys)
        # The conversation's generation: clear() starts a new one. A reply streams in a worker thread while the
        # UI may clear, so the turn is only kept if its conversation is still the current one.
        self.epoch = 0
        self._history_lock = threading.Lock()
        self.stop_ids = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("</s>")) if i is not None and i >= 0}

    @classmethod
    def open(cls, spec: str | Path, out_dir: str = "runs", **kwargs) -> ChatSession:
        return cls(resolve_checkpoint(str(spec), out_dir), **kwargs)

    @property
    def takes_thinking(self) -> bool:
        """Whether the chat template has an `enable_thinking` switch (Qwen3-style thinking models)."""
        template = self.tokenizer.chat_template
        sources = template.values() if isinstance(template, dict) else [template or ""]
        return self.mode == "chat" and any("enable_thinking" in source for source in sources)

    @cached_property
    def tool_keys(self) -> tuple[bool, bool]:
        """(names, ids): whether the template writes a tool turn's `name`, and matches results to calls by
        `tool_call_id`. Found by rendering a probe conversation, as the SFT mask probes a template's shape;
        a result only carries the keys its template reads, so the history stays what minimind's data holds."""
        probe: list[dict[str, Any]] = [{"role": "user", "content": "?"},
                 {"role": "assistant", "content": "", "tool_calls": [{"id": "probeid42", "name": "probe_fn", "arguments": {}}]},
                 {"role": "tool", "content": "r", "name": "probe_result_name", "tool_call_id": "probeid42"}]
        try:
            text = self._render(probe, generation=False)
        except Exception:  # a template that cannot render the probe: results go as plain tool turns
            return False, False
        return "probe_result_name" in text, "probeid42" in text

    def _render(self, messages: list[dict[str, Any]], generation: bool) -> str:
        # engine.data.tokenizer.render_chat's call (tools= as minimind's loader passes them), plus the template
        # variables the chat sets: enable_thinking only when the user switched it, so templates without it
        # render exactly as in training.
        variables = {"enable_thinking": self.thinking} if self.thinking is not None and self.takes_thinking else {}
        return self.tokenizer.apply_chat_template(messages, tools=self.tools or None, tokenize=False,
                                                  add_generation_prompt=generation, **variables)

    def prompt_text(self, turns: list[dict[str, Any]]) -> str:
        """The conversation so far plus `turns`, with the generation prompt (chat mode)."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return self._render(system + self.history + turns, generation=True)

    def prompt_ids(self, user_text: str) -> list[int]:
        return self._prompt([{"role": "user", "content": user_text}], user_text)[0]

    def _prompt(self, turns: list[dict[str, Any]], user_text: str) -> tuple[list[int], Kind]:
        if self.mode == "continue":
            bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
            return bos + self.tokenizer.encode(user_text, add_special_tokens=False), "answer"
        text = self.prompt_text(turns)
        return self.tokenizer.encode(text, add_special_tokens=False), reply_start(text)

    def _fitted_prompt(self, turns: list[dict[str, Any]], user_text: str, sampling: Sampling
                       ) -> tuple[list[int], Kind, int]:
        """The prompt, with the oldest whole messages dropped from the history (for good: the history is
        what the model sees) until it leaves room for the reply in the model's context; (ids, start,
        messages dropped). What still does not fit is cut from the front by generate()."""
        room = max(1, self.model.config.max_position_embeddings - sampling.max_new_tokens)
        ids, start = self._prompt(turns, user_text)
        dropped = 0
        while len(ids) > room and self.history and self.mode == "chat":
            with self._history_lock:
                # A whole exchange: the oldest message and what answers it, up to the next user message.
                cut = next((i for i, m in enumerate(self.history[1:], 1) if m["role"] == "user"), len(self.history))
                del self.history[:cut]
            dropped += cut
            ids, start = self._prompt(turns, user_text)
        return ids, start, dropped

    def reply(self, user_text: str, sampling: Sampling | None = None, use_cache: bool = True) -> ReplyStream:
        """Stream the raw reply piece by piece (split it with the stream's parser() to show it). The turn
        joins the history when the stream ends, also when the caller stops it early (closing the
        stream): the partial answer is what the user saw. The history keeps the answer and the tool
        calls, not the reasoning (see ReplyParser.assistant_message). A clear() while it streams wins:
        the turn belongs to the conversation it was asked in, which was cleared, and is dropped."""
        # Not a generator itself: the prompt and the epoch are taken now, when the question is asked.
        turns = [{"role": "user", "content": user_text}]
        sampling = sampling or Sampling()
        ids, start, dropped = self._fitted_prompt(turns, user_text, sampling)
        return self._stream(ids, start, turns, sampling, use_cache, self.epoch, dropped)

    def pending_calls(self) -> list[dict[str, Any]]:
        """The last reply's tool calls that no tool turn answers yet, in the order they were made."""
        answered = 0
        for turn in reversed(self.history):
            if turn["role"] == "tool":
                answered += 1
            elif turn["role"] == "assistant":
                return list(turn.get("tool_calls") or [])[answered:]
            else:
                break
        return []

    def add_tool_result(self, content: str) -> list[dict[str, Any]]:
        """The result of the next waiting call, as a `{"role": "tool"}` turn; returns the calls still waiting
        (continue_reply once none is). Refused when the last reply called no tool."""
        with self._history_lock:
            pending = self.pending_calls()
            if not pending:
                raise ToolResultError(
                    "no tool call to answer: the model's last reply called no tool (a result answers a "
                    "'tool call: ...' line, before the next message)" if self.mode == "chat" else
                    "no tool call to answer: a pretrain checkpoint continues text and never calls tools")
            names, ids = self.tool_keys
            turn: dict[str, Any] = {"role": "tool", "content": content}
            if names:
                turn["name"] = pending[0]["name"]
            if ids and "id" in pending[0]:
                turn["tool_call_id"] = pending[0]["id"]
            self.history.append(turn)
            return pending[1:]

    def continue_reply(self, sampling: Sampling | None = None, use_cache: bool = True) -> ReplyStream:
        """The model's turn after the tool results (the generation prompt follows the tool turns); streams and
        joins the history like reply()."""
        if self.mode != "chat" or not self.history or self.history[-1]["role"] != "tool":
            raise ToolResultError("nothing to continue from: give the tool's result first (/result TEXT)")
        sampling = sampling or Sampling()
        ids, start, dropped = self._fitted_prompt([], "", sampling)
        return self._stream(ids, start, [], sampling, use_cache, self.epoch, dropped)

    def _stream(self, prompt: list[int], start: Kind, turns: list[dict[str, Any]], sampling: Sampling,
                use_cache: bool, epoch: int, dropped: int = 0) -> ReplyStream:
        made = 0  # tokens generated so far: a piece's tokens are those drawn since the previous piece

        def counted(tokens: Iterator[int]) -> Iterator[int]:
            nonlocal made
            for token in tokens:
                made += 1
                yield token

        def pieces() -> Generator[str, None, None]:
            parser, seen = ReplyParser(start=start), 0
            try:
                tokens = counted(generate(self.model, prompt, sampling, self.stop_ids, use_cache=use_cache))
                for piece in stream_text(self.tokenizer, tokens):
                    before = parser.section
                    parser.feed(piece)
                    if "reasoning" in (before, parser.section):  # inside the think block, or its opening/closing tag
                        stream.reasoning_tokens += made - seen
                    seen = made
                    yield piece
            finally:
                if parser.section == "reasoning":  # tokens that never made a whole character (cut off at the end)
                    stream.reasoning_tokens += made - seen
                parser.finish()
                with self._history_lock:  # clear() cannot slip between the epoch check and the append
                    if self.mode == "chat" and self.epoch == epoch:
                        self.history += turns + [self._with_call_ids(parser.assistant_message())]

        room = max(1, self.model.config.max_position_embeddings - sampling.max_new_tokens)
        # bound before the generator's body first runs
        stream = ReplyStream(pieces(), start, dropped_turns=dropped, cut_prompt=len(prompt) > room)
        return stream

    def _with_call_ids(self, message: dict[str, Any]) -> dict[str, Any]:
        """Ids on the calls, only for templates that match results to calls by id (see tool_keys)."""
        if message.get("tool_calls") and self.tool_keys[1]:
            for call in message["tool_calls"]:
                self._calls_made += 1
                call["id"] = f"call{self._calls_made:05d}"  # 9 characters: Mistral's templates insist on it
        return message

    def answer(self, user_text: str, sampling: Sampling | None = None) -> str:
        return "".join(self.reply(user_text, sampling))

    def clear(self) -> None:
        """Start a new conversation; a reply still streaming from the old one will not join it."""
        with self._history_lock:
            self.epoch += 1
            self.history.clear()
