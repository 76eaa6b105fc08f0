"""engine.data.chat_render: the cache build's fast renderings must be apply_chat_template's text exactly.

A different rendering would not fail: the model would learn a format that chat, the HF export and llama.cpp
never show it. So every fast path is compared with apply_chat_template on every message kind (system with
tool specs as a JSON string or a list, OpenAI-wrapped and plain tool calls, string and object arguments,
empty-content calls, reasoning, tool results), and the runtime check is shown to fall back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data.chat_render import CheckedRender, builtin_render, direct_render, fastest_render
from engine.data.messages import RecordProblem, parse_conversation
from engine.data.tokenizer import load_tokenizer
from tests.engine.chat_fixtures import RECORDS, SPECIALS

CASES = 300
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

words = st.lists(st.sampled_from(["a", "Z", " ", "\n", "\t", "你好", "。", '"', "'", "\\", "{", "}", "<", ">",
                                  "🙂", "\u3000", "</s>", "<s>", "<think>", "</tool_call>", *SPECIALS]), max_size=8).map("".join)
arguments = st.one_of(st.none(), st.just(""), st.just({}), st.dictionaries(words, words | st.integers(), max_size=2),
                      words.map(lambda w: json.dumps({"q": w}, ensure_ascii=False)))
plain_call = st.fixed_dictionaries({"name": words.filter(bool)}, optional={"arguments": arguments})
calls = st.lists(plain_call | plain_call.map(lambda c: {"type": "function", "function": c}), max_size=2)
tool_spec = st.fixed_dictionaries({"name": words.filter(bool), "description": words,
                                   "parameters": st.just({"type": "object", "properties": {"x": {"type": "string"}}})})


@st.composite
def conversations(draw: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        system: dict[str, Any] = {"role": "system", "content": draw(words)}
        specs = draw(st.lists(tool_spec, max_size=2))
        if specs:
            system["tools"] = json.dumps(specs, ensure_ascii=False) if draw(st.booleans()) else specs
        messages.append(system)
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(words)})
        made = draw(calls)
        assistant: dict[str, Any] = {"role": "assistant", "content": draw(words) if not made or draw(st.booleans()) else ""}
        if made:
            assistant["tool_calls"] = json.dumps(made, ensure_ascii=False) if draw(st.booleans()) else made
            messages.append(assistant)
            messages.append({"role": "tool", "content": draw(words)})
            assistant = {"role": "assistant", "content": draw(words)}
        if draw(st.booleans()):
            assistant["reasoning_content"] = draw(words)
        messages.append(assistant)
    return {"conversations": messages}


@pytest.fixture(scope="module")
def tokenizers_pair(builtin_dir: Path, minimind_dir: Path):
    return {"builtin": load_tokenizer(builtin_dir), "minimind": load_tokenizer(minimind_dir)}


def _checked(record: dict[str, Any]):
    try:
        return parse_conversation(record)
    except RecordProblem:
        return None


def _same_everywhere(tok, record: dict[str, Any]) -> None:
    conv = _checked(record)
    if conv is None:
        return
    fast = fastest_render(tok)
    assert fast is not None
    direct = direct_render(tok)
    assert direct is not None
    for generation in (False, True):
        try:
            want = tok.apply_chat_template(conv.messages, tools=conv.tools, tokenize=False, add_generation_prompt=generation)
        except Exception:  # noqa: BLE001 - minimind's template fails on a call without arguments: so must the others
            for render in (fast, direct):
                with pytest.raises(Exception):  # noqa: B017 - whatever the template raises
                    render(conv.messages, conv.tools, generation)
            continue
        assert fast(conv.messages, conv.tools, generation) == want
        assert direct(conv.messages, conv.tools, generation) == want


@pytest.mark.parametrize("which", ["builtin", "minimind"])
def test_fast_renderings_equal_apply_chat_template_on_the_fixtures(tokenizers_pair, which) -> None:
    """Guards against the Python twin of the built-in template or the direct call of a compiled template
    rendering any of the chat fixtures (every message kind) otherwise than apply_chat_template."""
    for record in RECORDS:
        if _checked(record) is not None:
            _same_everywhere(tokenizers_pair[which], record)


@FUZZ
@given(record=conversations(), which=st.sampled_from(["builtin", "minimind"]))
def test_fast_renderings_equal_apply_chat_template_on_generated_conversations(tokenizers_pair, record, which) -> None:
    """Guards against a corner the fixtures miss: empty contents beside calls, several calls, string or
    empty arguments, wrapped calls, tool specs as a string, markup and quotes inside the text."""
    _same_everywhere(tokenizers_pair[which], record)


def test_the_built_in_template_gets_its_python_twin_and_others_the_compiled_template(tokenizers_pair) -> None:
    """Guards against the fast path silently not being taken (all the speed lost) or the Python twin being
    used for a template it does not copy."""
    builtin, minimind = tokenizers_pair["builtin"], tokenizers_pair["minimind"]
    assert fastest_render(builtin).__qualname__.startswith(builtin_render.__name__)
    assert fastest_render(minimind).__qualname__.startswith(direct_render.__name__)


def test_a_disagreeing_fast_render_is_dropped_at_once(tokenizers_pair) -> None:
    """Guards against a fast render that differs (a changed template, a transformers release) being kept:
    the checked calls return apply_chat_template's text and stop using it."""
    tok = tokenizers_pair["builtin"]
    conv = parse_conversation(RECORDS[0])
    checked = CheckedRender(tok, fast=lambda t: (lambda m, tools, g: "something else"))
    want = tok.apply_chat_template(conv.messages, tools=conv.tools, tokenize=False)
    assert checked(conv.messages, conv.tools, False) == want
    assert checked.fast is None
    assert checked(conv.messages, conv.tools, False) == want

    right = CheckedRender(tok)
    for _ in range(200):
        assert right(conv.messages, conv.tools, False) == want
    assert right.fast is not None, "the real fast render disagreed with apply_chat_template"
