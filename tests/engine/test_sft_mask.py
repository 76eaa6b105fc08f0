"""SFT rendering and loss masks for every message kind: the built-in template and an adopted minimind-style one."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.messages import parse_conversation
from engine.data.sft_mask import (
    SpanFinder,
    TurnShape,
    locate_turns,
    prefix_spans,
    template_render,
    tokenizer_render,
)
from engine.data.token_cache import build_token_cache
from engine.data.tokenizer import BOS, EOS, load_tokenizer
from tests.engine.chat_fixtures import (
    RECORDS,
    minimind_messages,
    write_jsonl,
)

CALL_WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'
CALLS_BOTH = ('<tool_call>\n{"name": "calculate", "arguments": {"expr": "6*7"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
CALL_CALC = '<tool_call>\n{"name": "calculate", "arguments": {"expr": "9-4"}}\n</tool_call>'

# What the model learns, turn by turn, for each of RECORDS. The built-in template lets the model open its
# own <think> block; minimind's generation prompt supplies `<think>\n` (and closes it when there is no
# reasoning), so under that template the learned text starts inside or after the block.
LEARNED_BUILTIN = [
    ["我是 minimind，一个小模型。</s>"],
    ["four</s>", "six</s>"],
    ["<think>\n红加蓝得到紫。\n</think>\n紫色。</s>"],
    [CALL_WEATHER + "</s>", "北京今天晴，25 度。</s>"],
    ["<think>\ntwo tools are needed\n</think>\nLet me check both.\n" + CALLS_BOTH + "</s>",
     "6 times 7 is 42; Paris has rain at 12 C.</s>"],
    [CALL_CALC + "</s>", "five</s>"],
]
LEARNED_MINIMIND = [
    ["我是 minimind，一个小模型。<|im_end|>"],
    ["four<|im_end|>", "six<|im_end|>"],
    ["红加蓝得到紫。\n</think>\n\n紫色。<|im_end|>"],
    [CALL_WEATHER + "<|im_end|>", "北京今天晴，25 度。<|im_end|>"],
    ["two tools are needed\n</think>\n\nLet me check both.\n" + CALLS_BOTH + "<|im_end|>",
     "6 times 7 is 42; Paris has rain at 12 C.<|im_end|>"],
    [CALL_CALC + "<|im_end|>", "five<|im_end|>"],
]


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("sft") / "sft.jsonl", RECORDS)


def learned_runs(tokenizer, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """The masked tokens decoded, one string per run of consecutive learned tokens (one per assistant turn)."""
    runs, current = [], []
    for token, learned in zip(ids.tolist(), mask.tolist()):
        if learned:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    return runs + ([tokenizer.decode(current, skip_special_tokens=False)] if current else [])


@pytest.mark.parametrize("which,expected", [("builtin", LEARNED_BUILTIN), ("minimind", LEARNED_MINIMIND)])
def test_cache_masks_each_message_kind_by_meaning(tmp_path, request, sft_file, which, expected):
    """Guards against training on the system prompt, tool specs, user turns or tool results, and against
    dropping what the assistant generates: its reasoning, its tool calls (also in empty-content turns),
    its answer and the end-of-turn token."""
    directory = request.getfixturevalue(f"{which}_dir")
    tok = load_tokenizer(directory)
    cache = build_token_cache(sft_file, directory, "sft", tmp_path / "cache")
    for i, record in enumerate(RECORDS):
        ids, mask = cache.doc(i)
        runs = learned_runs(tok, np.asarray(ids), np.asarray(mask))
        assert runs == expected[i], f"record {i}"
        learned = "".join(runs)
        for message in record["conversations"]:
            if message["role"] != "assistant" and len(message["content"] or "") > 3:
                assert message["content"] not in learned, f"record {i} learns a {message['role']} message"
        assert "查询城市天气" not in learned and "arithmetic" not in learned  # tool specs never learned
    assert cache.meta["n_loss_tokens"] == int(np.asarray(cache.mask).sum())


def test_adopted_template_renders_exactly_what_minimind_renders(tmp_path, minimind_dir, sft_file):
    """Guards against the engine rendering tool conversations differently from minimind's loader (tools
    dropped, calls left as JSON strings, tools= not passed): a model trained here would then not match
    prompts built the minimind way."""
    tok = load_tokenizer(minimind_dir)
    cache = build_token_cache(sft_file, minimind_dir, "sft", tmp_path / "cache")
    finder = SpanFinder(tokenizer_render(tok))
    for i, record in enumerate(RECORDS):
        messages, tools = minimind_messages(record)
        expected = tok.apply_chat_template(messages, tools=tools, tokenize=False)
        assert finder(parse_conversation(record))[0] == expected, f"record {i}"
        assert tok.decode(cache.doc(i)[0].tolist(), skip_special_tokens=False) == expected, f"record {i}"
    assert "<tool_call>" in expected and "<tool_response>" in expected and "# Tools" in expected


def test_studio_renderer_matches_transformers(builtin_dir, minimind_dir):
    """Guards against the Data tab (which renders without transformers) showing a different text than the
    run trains on: jinja's own tojson escapes '<' and sorts keys, transformers' does neither."""
    for directory in (builtin_dir, minimind_dir):
        tok = load_tokenizer(directory)
        ours = template_render(tok.chat_template, bos_token=tok.bos_token, eos_token=tok.eos_token)
        theirs = tokenizer_render(tok)
        for record in RECORDS:
            conv = parse_conversation(record)
            for generation in (False, True):
                assert ours(conv.messages, conv.tools, generation) == theirs(conv.messages, conv.tools, generation)


def test_one_render_per_conversation_gives_the_per_turn_spans(builtin_dir):
    """Guards against the SFT cache going back to one template render per assistant turn (the 1 MB/s
    bottleneck), and against the one-render spans differing from what per-turn rendering finds."""
    render = tokenizer_render(load_tokenizer(builtin_dir))
    calls = [0]

    def counting(messages, tools, generation):
        calls[0] += 1
        return render(messages, tools, generation)

    finder = SpanFinder(counting)
    assert finder.shape == TurnShape(opening=f"{BOS}assistant\n", prompt=f"{BOS}assistant\n", end=EOS)
    calls[0] = 0
    for record in RECORDS:
        conv = parse_conversation(record)
        full, spans = finder(conv)
        assert spans == prefix_spans(conv, render, full)
    assert calls[0] == len(RECORDS)


def test_generation_prompt_with_an_empty_think_block():
    """Guards against a wrong mask under templates whose generation prompt differs from how a turn renders
    (Qwen3 and minimind prompt with an empty think block), or a user turn quoting the answer being masked."""

    def render(messages, tools, generation):
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return body + ("<|im_start|>assistant\n<think>\n\n</think>\n\n" if generation else "")

    shape = TurnShape.probe(render)
    assert shape == TurnShape("<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n\n</think>\n\n", "<|im_end|>")
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "<|im_start|>assistant\na2"}, {"role": "assistant", "content": "a2"}]
    full = render(msgs, None, False)
    spans = locate_turns(full, msgs, shape)
    assert [full[a:b] for a, b in spans] == ["a1<|im_end|>", "a2<|im_end|>"]
    assert spans[1][0] > full.index("<|im_start|>user\n<|im_start|>assistant\na2")


def test_template_without_an_end_token_falls_back_to_prefix_renders():
    """Guards against a template the probe cannot read (no end-of-turn string) getting no mask, or a mask
    that runs into the next turn."""

    def render(messages, tools, generation):
        return "".join(f"### {m['role']}: {m['content']}\n\n" for m in messages) + ("### assistant: " if generation else "")

    finder = SpanFinder(render)
    assert finder.shape is None
    conv = parse_conversation({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                                 {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]})
    full, spans = finder(conv)
    assert [full[a:b] for a, b in spans] == ["hello", "ciao"]

