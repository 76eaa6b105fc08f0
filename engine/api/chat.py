"""Chatting with a checkpoint, for `minimind-studio chat` and the studio's Chat tab.

Reading a streamed reply (`ReplyParser`, `ToolCall`, the tools and result files) is pure Python and loads
at once, so the UI thread can parse pieces. A session holds a model: `open_chat` imports torch, and so do
`ChatSession` and `Sampling`, which are looked up only when first asked for (PEP 562 `__getattr__`), so
importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api.lazy import lazy_names
from engine.chat.reply import Kind, ReplyParser, ReplyStream, ToolCall, read_tool_result, read_tool_specs

if TYPE_CHECKING:
    from engine.chat.session import ChatSession
    from engine.model.generate import Sampling

__all__ = ["ChatSession", "Kind", "ReplyParser", "ReplyStream", "Sampling", "ToolCall", "open_chat",
           "read_tool_result", "read_tool_specs"]

# name -> the module that defines it; both import torch at import time.
_LAZY = {"ChatSession": "engine.chat.session", "Sampling": "engine.model.generate"}


def open_chat(spec: str | Path, out_dir: str | Path = "runs", *, device: str = "cpu", system_prompt: str | None = None,
              tools: list[dict[str, Any]] | None = None) -> ChatSession:
    """A chat session with what `spec` names: a run directory or id (under out_dir), a checkpoint directory or an
    exported Hugging Face folder. Loads the tokenizer and the model on `device` (cpu, cuda, cuda:N, mps, auto);
    `tools` are function specs offered in the system turn (see read_tool_specs). Imports torch."""
    from engine.chat.session import ChatSession

    return ChatSession.open(spec, str(out_dir), device=device, system_prompt=system_prompt, tools=tools)


__getattr__ = lazy_names(globals(), _LAZY)
