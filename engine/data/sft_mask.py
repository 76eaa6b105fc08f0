"""SFT conversations through a chat template: one render each, and the characters the model learns.

The model learns what it has to generate after the template's generation prompt: an assistant turn's
reasoning, content and tool calls, and the end-of-turn token that closes it. It never learns the system
prompt, the tool specs, the user turns or the tool results: they are given to it at inference.

Each conversation is rendered once. Where the assistant turns lie in that text comes from the template's
shape, probed once per template with marker messages (`TurnShape`): the text every assistant turn opens
with, the generation prompt, and the end-of-turn string. A turn's learned span runs from where its
rendering stops agreeing with the generation prompt (minimind's template prompts with an empty
`<think>` block, so a turn without reasoning starts learning after it, one with reasoning inside it) to
its end-of-turn string. The token mask then comes from the tokenizer's character offsets
(`encode_with_masks`), or on the cache build's fast path from the tokens' UTF-8 byte lengths
(engine.data.batch_encode), which mark the same tokens. A template
whose shape cannot be probed falls back to rendering every prefix of the conversation (slow, but it
needs nothing from the template except stable prefixes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.data.messages import Conversation, RecordProblem

Render = Callable[[list[dict[str, Any]], "list[dict[str, Any]] | None", bool], str]
"""render(messages, tools, add_generation_prompt) -> text, like apply_chat_template(..., tokenize=False)."""
Span = tuple[int, int]
# Marker strings for probing a template: plain words, so no template rewrites them (minimind strips newlines).
_USER, _ANSWER, _REASONING, _FUNCTION = "probeuser7f3a", "probeanswer7f3a", "probereasoning7f3a", "probefn7f3a"


def tokenizer_render(tokenizer: Any) -> Render:
    """The tokenizer's own template, called exactly as minimind's SFT loader calls it (tools= beside the messages)."""

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)

    return render


def template_render(template: str, **special_tokens: str) -> Render:
    """A template string rendered with jinja2 set up as transformers sets it up (no transformers import):
    block trimming, a tojson that keeps non-ASCII and never escapes HTML, raise_exception."""
    import json

    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation: bool) -> str:
        return compiled.render(messages=messages, tools=tools, add_generation_prompt=generation, **special_tokens)

    return render


@dataclass(frozen=True)
class TurnShape:
    """How a template lays out an assistant turn, learned from marker conversations."""

    opening: str
    """Text every assistant turn starts with (e.g. `<s>assistant\\n`, `<|im_start|>assistant\\n<think>\\n`)."""
    prompt: str
    """The generation prompt (minimind's adds `<think>\\n\\n</think>\\n\\n` after the opening)."""
    end: str
    """The end-of-turn string after the turn's content, trailing whitespace removed (`</s>`, `<|im_end|>`)."""

    @classmethod
    def probe(cls, render: Render) -> TurnShape | None:
        """The template's shape, or None when it cannot be read off (then turns are found by prefix renders)."""
        user = [{"role": "user", "content": _USER}]
        try:
            base = render(user, None, False)
            prompt = render(user, None, True)
            plain = render(user + [{"role": "assistant", "content": _ANSWER}], None, False)
        except Exception:  # noqa: BLE001 - a template may refuse a lone user turn; the fallback copes
            return None
        if not (prompt.startswith(base) and plain.startswith(base) and _ANSWER in plain[len(base):]):
            return None
        tail = plain[len(base):]
        openings = [prompt[len(base):], tail[: tail.index(_ANSWER)]]
        end = tail[tail.index(_ANSWER) + len(_ANSWER):].rstrip()
        for extra in ({"reasoning_content": _REASONING, "content": _ANSWER},
                      {"content": "", "tool_calls": [{"name": _FUNCTION, "arguments": {}}]}):
            try:
                text = render(user + [{"role": "assistant", **extra}], None, False)
            except Exception:  # noqa: BLE001 - a template without tool support; its turns need no opening for calls
                continue
            marks = [text.find(mark, len(base)) for mark in (_REASONING, _ANSWER, _FUNCTION)]
            found = [at for at in marks if at >= 0]
            if text.startswith(base) and found:
                openings.append(text[len(base): min(found)])
        opening = os.path.commonprefix(openings)  # character-wise, whatever the name says
        return cls(opening, prompt[len(base):], end) if opening and end else None


def locate_turns(full: str, messages: list[dict[str, Any]], shape: TurnShape) -> list[Span] | None:
    """Learned spans of the assistant turns in one rendering, or None when the rendering does not fit `shape`.

    Other messages' contents move a cursor forward, so a user who quotes a template's markup is not taken
    for an assistant turn.
    """
    spans: list[Span] = []
    cursor = 0
    for msg in messages:
        if msg["role"] != "assistant":
            text = msg["content"].strip()
            at = full.find(text, cursor) if text else -1
            cursor = at + len(text) if at >= 0 else cursor
            continue
        start = full.find(shape.opening, cursor)
        if start < 0:
            return None
        head, limit = start + len(shape.opening), min(len(full), start + len(shape.prompt))
        while head < limit and full[head] == shape.prompt[head - start]:
            head += 1
        end = full.find(shape.end, head)
        if end < 0:
            return None
        cursor = end + len(shape.end)
        spans.append((head, cursor))
    return spans


def prefix_spans(conv: Conversation, render: Render, full: str) -> list[Span]:
    """The slow fallback: assistant turn i spans from the end of render(msgs[:i], generation prompt) to the
    end of render(msgs[:i+1]) without trailing whitespace. Needs a template whose prefixes are stable."""
    spans: list[Span] = []
    for i, msg in enumerate(conv.messages):
        if msg["role"] != "assistant":
            continue
        prefix = render(conv.messages[:i], conv.tools, True) if i else ""
        turn = render(conv.messages[: i + 1], conv.tools, False)
        end = len(turn.rstrip())
        if not (full.startswith(turn) and turn.startswith(prefix) and len(prefix) < end):
            raise RecordProblem(f"cannot find assistant turn {i} in the chat template's rendering "
                             "(the template renders earlier turns differently once later ones follow)")
        spans.append((len(prefix), end))
    return spans


class SpanFinder:
    """Renders conversations through one template and finds their learned character spans."""

    def __init__(self, render: Render) -> None:
        self.render = render
        self.shape = TurnShape.probe(render)

    def __call__(self, conv: Conversation) -> tuple[str, list[Span]]:
        """(the rendering, learned spans); RecordProblem when the template cannot render or place a turn."""
        try:
            full = self.render(conv.messages, conv.tools, False)
        except Exception as error:  # noqa: BLE001 - jinja's TemplateError and friends: report, do not crash
            raise RecordProblem(f"the chat template failed on this conversation ({type(error).__name__}: {error})") from None
        spans = locate_turns(full, conv.messages, self.shape) if self.shape else None
        return full, spans if spans is not None else prefix_spans(conv, self.render, full)


def mask_from_offsets(offsets: np.ndarray, spans: list[Span]) -> np.ndarray:
    """uint8 mask: 1 for tokens whose (non-empty) character span lies inside one of `spans`. (The cache build's
    fast path marks the same tokens from byte lengths: engine.data.batch_encode._mask.)"""
    mask = np.zeros(len(offsets), dtype=np.uint8)
    if len(offsets):
        starts, ends = offsets[:, 0], offsets[:, 1]
        for a, b in spans:
            mask |= ((starts >= a) & (ends <= b) & (ends > starts)).astype(np.uint8)
    return mask


def encode_with_masks(tokenizer: Any, texts: list[str], spans: list[list[Span]]) -> list[tuple[list[int], np.ndarray]]:
    """(token ids, loss mask) per rendered conversation, from one batched encode with character offsets."""
    # The rendering already holds the special tokens, so the backend must not add any.
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [(enc.ids, mask_from_offsets(np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2), turn_spans))
            for enc, turn_spans in zip(encodings, spans)]
