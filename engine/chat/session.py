"""A chat with one checkpoint: loads model + tokenizer, keeps the history, streams replies.

A pretrain checkpoint has never seen the chat template, so it continues plain text; an SFT checkpoint
(or an imported model with a chat template) gets the conversation rendered with its template.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engine.chat.reply import ReplyParser, parse_reply
from engine.checkpoints.checkpoint import Checkpoint, load_model_weights
from engine.checkpoints.lookup import resolve_checkpoint
from engine.data.tokenizer import load_tokenizer, render_chat
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
        self.model = load_model(ckpt, device)
        self.tokenizer = load_tokenizer(ckpt.tokenizer_dir)
        self.mode = "chat" if ckpt.stage != "pretrain" and self.tokenizer.chat_template else "continue"
        self.system_prompt = system_prompt
        self.tools = tools  # function specs rendered in the system turn (engine.chat.reply.read_tool_specs)
        self.history: list[dict[str, Any]] = []
        # The conversation's generation: clear() starts a new one. A reply streams in a worker thread while the
        # UI may clear, so the turn is only kept if its conversation is still the current one.
        self.epoch = 0
        self._history_lock = threading.Lock()
        self.stop_ids = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("</s>")) if i is not None and i >= 0}

    @classmethod
    def open(cls, spec: str | Path, out_dir: str = "runs", **kwargs) -> ChatSession:
        return cls(resolve_checkpoint(str(spec), out_dir), **kwargs)

    def prompt_ids(self, user_text: str) -> list[int]:
        if self.mode == "continue":
            bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
            return bos + self.tokenizer.encode(user_text, add_special_tokens=False)
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + self.history
        messages = messages + [{"role": "user", "content": user_text}]
        text = render_chat(self.tokenizer, messages, add_generation_prompt=True, tools=self.tools or None)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def reply(self, user_text: str, sampling: Sampling | None = None, use_cache: bool = True) -> Iterator[str]:
        """Stream the raw reply piece by piece (split it with engine.chat.reply.ReplyParser to show it). The turn
        joins the history when the stream ends, also when the caller stops it early (closing the
        generator): the partial answer is what the user saw. The history keeps the answer and the tool
        calls, not the reasoning (see ReplyParser.assistant_message). A clear() while it streams wins:
        the turn belongs to the conversation it was asked in, which was cleared, and is dropped."""
        # Not a generator itself: the epoch is taken now, when the question is asked, not at the first piece.
        return self._stream(user_text, sampling or Sampling(), use_cache, self.epoch)

    def _stream(self, user_text: str, sampling: Sampling, use_cache: bool, epoch: int) -> Iterator[str]:
        tokens = generate(self.model, self.prompt_ids(user_text), sampling, self.stop_ids, use_cache=use_cache)
        parser = ReplyParser()
        try:
            for piece in stream_text(self.tokenizer, tokens):
                parser.feed(piece)
                yield piece
        finally:
            parser.finish()
            with self._history_lock:  # clear() cannot slip between the epoch check and the append
                if self.mode == "chat" and self.epoch == epoch:
                    self.history += [{"role": "user", "content": user_text}, parser.assistant_message()]

    def answer(self, user_text: str, sampling: Sampling | None = None) -> str:
        return "".join(self.reply(user_text, sampling))

    def clear(self) -> None:
        """Start a new conversation; a reply still streaming from the old one will not join it."""
        with self._history_lock:
            self.epoch += 1
            self.history.clear()


def read_heldout(path: Path) -> list[dict]:
    """Held-out questions: one {"messages": [...], "answer": "..."} object per line."""
    import json

    from engine.errors import DataError

    items = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item["messages"], list) or not isinstance(item["answer"], str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(
                f'{path}:{line_no}: expected {{"messages": [{{"role": "user", "content": ...}}], "answer": "..."}}. '
                "Fix or remove that line."
            ) from None
        items.append(item)
    return items


@torch.no_grad()  # not inference_mode: tensors cached here (rotary tables) are reused by training
def exact_match(session: ChatSession, items: list[dict], max_new_tokens: int = 32) -> dict:
    """Greedy answers to held-out questions ({"messages": [...], "answer": str}) scored by exact match."""
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    results = []
    for item in items:
        session.clear()
        *earlier, last = item["messages"]
        session.history = list(earlier)
        got = parse_reply(session.answer(last["content"], greedy)).answer  # scored without its reasoning
        results.append({"id": item.get("id"), "kind": item.get("kind"), "expected": item["answer"], "got": got,
                        "ok": got == item["answer"].strip()})
    session.clear()
    correct = sum(r["ok"] for r in results)
    by_kind: dict[str, list[int]] = {}
    for r in results:
        by_kind.setdefault(r["kind"] or "all", [0, 0])
        by_kind[r["kind"] or "all"][0] += r["ok"]
        by_kind[r["kind"] or "all"][1] += 1
    return {"accuracy": correct / max(1, len(results)), "correct": correct, "total": len(results),
            "by_kind": {k: {"correct": c, "total": n} for k, (c, n) in by_kind.items()}, "results": results}
