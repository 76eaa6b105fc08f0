"""Rendering SFT conversations through the tokenizer's chat template, fast, with the template's exact text.

apply_chat_template does per-call work that a cache build of millions of conversations pays millions of
times: it copies every message into plain data, looks the template up, checks its arguments. Messages from
a jsonl file are plain data already, so `CheckedRender` calls the compiled template directly, with what
apply_chat_template passes it. For the built-in template it goes further and uses `builtin_render`, the
same template written in Python (jinja's own evaluation is most of what is left).

Neither may render anything but what apply_chat_template renders: `CheckedRender` renders the first
conversations, and one in every `SAMPLE_EVERY` after them, both ways, and at the first difference (say, a
transformers release that renders otherwise, or a built-in template changed without its Python twin) uses
apply_chat_template for the rest of the build. Tests compare all three on every message kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from engine.data.sft_mask import Render, tokenizer_render

FIRST_CHECKS = 64
SAMPLE_EVERY = 1024


def _tojson(value: Any) -> str:
    """transformers' tojson filter: non-ASCII kept, nothing HTML-escaped, default separators."""
    return json.dumps(value, ensure_ascii=False)


def builtin_render(bos: str, eos: str) -> Render:
    """engine.data.tokenizer.chat_template_for(bos, eos) written in Python: the same text, for plain data
    (messages as engine.data.messages checks them), in a tenth of jinja's time."""

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation: bool) -> str:
        out = []
        if tools:
            out.append(f"{bos}system\n")
            if messages and messages[0]["role"] == "system" and messages[0].get("content"):
                out.append(messages[0]["content"] + "\n\n")
            out.append("# Tools\n<tools>")
            out.extend("\n" + _tojson(tool) for tool in tools)
            out.append(f"\n</tools>{eos}\n")
        for k, message in enumerate(messages):
            if tools and k == 0 and message["role"] == "system":
                continue  # it went into the tools turn
            content = message.get("content")
            content = content if isinstance(content, str) else ""
            out.append(f"{bos}{message['role']}\n")
            reasoning = message.get("reasoning_content")
            if message["role"] == "assistant" and isinstance(reasoning, str) and reasoning:
                out.append(f"<think>\n{reasoning}\n</think>\n")
            out.append(content)
            for n, call in enumerate(message.get("tool_calls") or []):
                fn = call.get("function") or call
                args = fn.get("arguments") or {}
                out.append(("\n" if content or n else "") + '<tool_call>\n{"name": ' + _tojson(fn["name"])
                           + ', "arguments": ' + (args if isinstance(args, str) else _tojson(args)) + "}\n</tool_call>")
            out.append(f"{eos}\n")
        if generation:
            out.append(f"{bos}assistant\n")
        return "".join(out)

    return render


def direct_render(tokenizer: Any) -> Render | None:
    """The tokenizer's compiled template called as apply_chat_template calls it, minus the per-call copies;
    None when this transformers does not have the functions it needs."""
    try:
        from transformers.utils.chat_template_utils import _alias_reasoning_fields, _compile_jinja_template
    except ImportError:
        return None
    extra = dict(tokenizer.special_tokens_map)  # what apply_chat_template passes besides the messages

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation: bool) -> str:
        compiled = _compile_jinja_template(tokenizer.get_chat_template(None, tools))  # compiled once, then cached
        # As apply_chat_template: keys holding None dropped, reasoning also offered under its other names.
        plain = _alias_reasoning_fields([{k: v for k, v in m.items() if v is not None} for m in messages])
        return compiled.render(messages=plain, tools=tools, documents=None, add_generation_prompt=generation, **extra)

    return render


def fastest_render(tokenizer: Any) -> Render | None:
    """builtin_render for the built-in template, else direct_render."""
    from engine.data.tokenizer import chat_template_for

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    if isinstance(bos, str) and isinstance(eos, str) and tokenizer.chat_template == chat_template_for(bos, eos):
        return builtin_render(bos, eos)
    return direct_render(tokenizer)


class CheckedRender:
    """A fast render that falls back to apply_chat_template at its first disagreement (see the module doc)."""

    def __init__(self, tokenizer: Any, fast: Callable[[Any], Render | None] = fastest_render) -> None:
        self.reference = tokenizer_render(tokenizer)
        self.fast = fast(tokenizer)
        self.calls = 0

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation: bool) -> str:
        if self.fast is None:
            return self.reference(messages, tools, generation)
        self.calls += 1
        if self.calls > FIRST_CHECKS and self.calls % SAMPLE_EVERY:
            return self.fast(messages, tools, generation)
        want = self.reference(messages, tools, generation)  # raises as the template does, for the caller to report
        try:
            same = self.fast(messages, tools, generation) == want
        except Exception:  # noqa: BLE001 - any disagreement means: do not use it
            same = False
        if not same:
            self.fast = None
        return want
