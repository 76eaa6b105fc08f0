"""The Chat tab's folded settings: sampling, the system prompt, the tools file and the thinking switch.

Read on the UI thread at each send (an edited tools file counts); the workers get plain values.
"""

from __future__ import annotations

import random
from typing import Any

from textual.containers import Horizontal
from textual.widgets import Collapsible, Input, Label, Switch

from engine.api.chat import read_tool_specs

SAMPLING_FIELDS = (  # id, label, default, type
    ("temperature", "temp", "0.7", float), ("top_p", "top-p", "0.9", float), ("top_k", "top-k", "0", int),
    ("repetition_penalty", "rep", "1.1", float), ("max_new_tokens", "max tok", "256", int), ("seed", "seed", "", int),
)


class ChatSettings(Collapsible):
    def __init__(self) -> None:
        sampling = [widget for ident, label, default, _ in SAMPLING_FIELDS for widget in (
            Label(label),
            Input(default, id=f"s-{ident}", classes="num", placeholder="random" if ident == "seed" else "", compact=True),
        )]
        super().__init__(
            Horizontal(*sampling, id="chat-sampling"),
            Input(placeholder="system prompt (SFT checkpoints)", id="s-system", compact=True),
            Input(placeholder="tools: a JSON file of function specs, offered in the system turn (/tools FILE)",
                  id="s-tools", compact=True),
            Horizontal(Label("thinking"), Switch(True, id="s-thinking"),
                       Label("(templates with enable_thinking, e.g. Qwen3-style; /think on|off)", classes="hint"),
                       id="chat-thinking"),
            title="sampling, system prompt, tools, thinking", collapsed=True, id="chat-settings",
        )

    def sampling_values(self) -> dict[str, Any]:
        """engine.api.chat.Sampling fields read from the inputs (the seed apart: see seed())."""
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

    @property
    def system(self) -> str | None:
        return self.query_one("#s-system", Input).value.strip() or None

    def tool_specs(self) -> list[dict[str, Any]] | None:
        """The specs in the tools field's file (ToolSpecError when it does not read as specs)."""
        path = self.query_one("#s-tools", Input).value.strip()
        return read_tool_specs(path) if path else None

    @property
    def thinking(self) -> bool:
        """enable_thinking for templates that take it; the others never see it."""
        return self.query_one("#s-thinking", Switch).value

    @thinking.setter
    def thinking(self, value: bool) -> None:
        self.query_one("#s-thinking", Switch).value = value
