"""Thinking templates and tool results in a chat with the shared trained model: a generation prompt that opens
`<think>` (Qwen3-style), the enable_thinking switch, and answering a tool call so the model goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.chat.reply import ReplyParser, parse_reply, read_tool_result, reply_start
from engine.chat.session import ChatSession
from engine.errors import ToolResultError
from engine.model.generate import Sampling
from tests.engine.chat_fixtures import MINIMIND_STYLE_TEMPLATE, minimind_messages
from tests.support.chat_templates import model_with_template, qwen3_style_template, script

ADD = {"name": "add", "description": "add two numbers", "parameters": {"type": "object"}}
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
# A template that matches results to calls by id and names the tool that answered (Mistral/Llama-style keys).
IDS_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}{{ '<s>assistant\n' + (m.content or '') }}"
    "{%- for c in (m.tool_calls or []) -%}{{ '[call ' + c.id + '] ' + c.name + (c.arguments | tojson) }}{%- endfor -%}"
    "{{ '</s>\n' }}"
    "{%- elif m.role == 'tool' -%}{{ '<s>tool\n' + m.name + ' ' + m.tool_call_id + ': ' + m.content + '</s>\n' }}"
    "{%- else -%}{{ '<s>' + m.role + '\n' + m.content + '</s>\n' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<s>assistant\n' }}{%- endif -%}"
)


@pytest.fixture(scope="module")
def qwen3_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model as a Hugging Face folder whose tokenizer adopted a Qwen3-style thinking template."""
    return model_with_template(trained_run, tmp_path_factory.mktemp("qwen3") / "model", qwen3_style_template("<s>", "</s>"))


def test_reply_start_reads_the_prompt_tail() -> None:
    """Guards against a reply whose think block the prompt opened being shown as the answer (the reply holds
    only `</think>`), and against an empty closed block or minimind's prompt being taken as open."""
    assert reply_start("<|im_start|>assistant\n<think>\n") == "reasoning"
    assert reply_start("<|im_start|>assistant\n<think>\n\n</think>\n\n") == "answer"
    assert reply_start("<s>assistant\n") == "answer"
    reply = "the user greets me\n</think>\n\nhello there"
    for size in (1, 3, 7):
        parser = ReplyParser(start="reasoning")
        for i in range(0, len(reply), size):
            parser.feed(reply[i:i + size])
        parser.finish()
        assert (parser.reasoning, parser.answer) == ("the user greets me", "hello there")
    assert parse_reply("still thinking", start="reasoning").answer == ""


def test_thinking_template_starts_the_reply_in_reasoning(qwen3_model: Path) -> None:
    """Guards against the real model's reply after a `<think>\\n` prompt being read as its answer: with no
    `</think>` generated, every token is reasoning and the history keeps an empty answer; with thinking
    switched off the template closes the block in the prompt and the same reply is the answer."""
    session = ChatSession.open(qwen3_model)
    assert session.mode == "chat" and session.takes_thinking
    session.stop_ids = set()  # exactly max_new_tokens tokens
    sampling = Sampling(temperature=1.0, max_new_tokens=12, seed=3)

    stream = session.reply("hi", sampling)
    raw = "".join(stream)
    assert stream.start == "reasoning" and "</think>" not in raw
    assert stream.reasoning_tokens == 12
    parsed = parse_reply(raw, stream.start)
    assert parsed.answer == "" and parsed.reasoning == raw.strip()
    assert session.history == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]

    session.clear()
    session.thinking = False
    assert session.prompt_text([{"role": "user", "content": "hi"}]).endswith("<s>assistant\n<think>\n\n</think>\n\n")
    stream = session.reply("hi", sampling)
    raw = "".join(stream)
    assert stream.start == "answer" and stream.reasoning_tokens == 0
    assert session.history[-1] == {"role": "assistant", "content": parse_reply(raw).answer} and raw.strip()


def test_closing_think_in_the_reply_leaves_only_the_answer_in_the_history(qwen3_model: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against the reasoning of a prompt-opened think block reaching the history (and the next
    prompt), and against its token count including the answer."""
    session = ChatSession.open(qwen3_model)
    prompts = script(session.tokenizer, monkeypatch, ["the user greets me\n</think>\n\nhello there", "ok"])
    stream = session.reply("hi")
    raw = "".join(stream)
    parsed = parse_reply(raw, stream.start)
    assert (parsed.reasoning, parsed.answer) == ("the user greets me", "hello there")
    assert session.history[-1] == {"role": "assistant", "content": "hello there"}
    encode = session.tokenizer.encode
    assert len(encode("the user greets me")) < stream.reasoning_tokens <= len(encode("the user greets me\n</think>\n\n"))
    session.answer("and?")
    assert prompts[1].endswith("<s>assistant\nhello there</s>\n<s>user\nand?</s>\n<s>assistant\n<think>\n")
    assert "greets" not in prompts[1]


def test_thinking_switch_only_reaches_templates_that_take_it(trained_run: Path) -> None:
    """Guards against enable_thinking changing the built-in template's prompt (it has no such switch) or
    /think claiming to work there."""
    session = ChatSession.open(trained_run)
    assert not session.takes_thinking
    before = session.prompt_ids("hi")
    session.thinking = False
    assert session.prompt_ids("hi") == before


@pytest.mark.parametrize("template", ["builtin", "minimind", "qwen3"])
def test_a_tool_result_lets_the_model_go_on_and_the_history_is_minimind_data(
        template: str, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against a tool result that never reaches the prompt, a continuation without the generation
    prompt after the tool turn, and a history that renders differently from the same conversation in
    minimind's data format (assistant tool_calls -> tool -> assistant answer), under each template."""
    source: Path = trained_run
    if template != "builtin":
        text = MINIMIND_STYLE_TEMPLATE if template == "minimind" else qwen3_style_template("<s>", "</s>")
        source = model_with_template(trained_run, tmp_path / "model", text)
    session = ChatSession.open(source, system_prompt="You can call tools.", tools=[ADD])
    lead = "add them\n</think>\n\n" if template == "qwen3" else ""  # its prompt opened the think block
    prompts = script(session.tokenizer, monkeypatch, [lead + CALL, lead + "It is 5."])

    stream = session.reply("2 plus 3?")
    parsed = stream.parser()
    parsed.feed("".join(stream))
    parsed.finish()
    assert [c.label() for c in parsed.tool_calls] == ['add({"a": 2, "b": 3})']
    assert session.pending_calls() == [{"name": "add", "arguments": {"a": 2, "b": 3}}]
    assert session.add_tool_result("5") == []
    assert session.pending_calls() == []
    "".join(session.continue_reply())

    record = {"conversations": [
        {"role": "system", "content": "You can call tools.", "tools": json.dumps([ADD])},
        {"role": "user", "content": "2 plus 3?"},
        {"role": "assistant", "content": "", "tool_calls": json.dumps([{"name": "add", "arguments": {"a": 2, "b": 3}}])},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "It is 5."}]}
    messages, tools = minimind_messages(record)
    assert session.history == [{k: v for k, v in m.items() if k != "tools"} for m in messages[1:]]
    tok = session.tokenizer
    rendered = tok.apply_chat_template([{"role": "system", "content": "You can call tools."}] + session.history,
                                       tools=session.tools, tokenize=False)
    assert rendered == tok.apply_chat_template(messages, tools=tools, tokenize=False)
    expected_prompt = tok.apply_chat_template(messages[:-1], tools=tools, tokenize=False, add_generation_prompt=True)
    assert prompts[1] == tok.decode(tok.encode(expected_prompt, add_special_tokens=False))
    assert "5" in prompts[1].split("2 plus 3?")[1]


def test_tool_results_are_refused_without_a_call_and_follow_the_calls_in_order(
        trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against /result accepted when the model called nothing (a tool turn the model never asked
    for), against the second of two calls never being answered, and against ids or names missing for a
    template that matches results to calls by them."""
    session = ChatSession.open(model_with_template(trained_run, tmp_path / "model", IDS_TEMPLATE))
    assert session.tool_keys == (True, True)
    with pytest.raises(ToolResultError, match="no tool call to answer"):
        session.add_tool_result("5")
    two = CALL + '\n<tool_call>\n{"name": "mul", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    prompts = script(session.tokenizer, monkeypatch, ["just text", two, "5 and 6"])
    session.answer("hello")
    with pytest.raises(ToolResultError, match="called no tool"):
        session.add_tool_result("5")
    with pytest.raises(ToolResultError, match="result first"):
        session.continue_reply()

    session.answer("2+3 and 2*3?")
    calls = session.history[-1]["tool_calls"]
    assert [(c["name"], c["id"]) for c in calls] == [("add", "call00001"), ("mul", "call00002")]
    assert [c["name"] for c in session.add_tool_result("5")] == ["mul"]
    assert session.add_tool_result("6") == []
    assert session.history[-2:] == [{"role": "tool", "content": "5", "name": "add", "tool_call_id": "call00001"},
                                    {"role": "tool", "content": "6", "name": "mul", "tool_call_id": "call00002"}]
    "".join(session.continue_reply())
    assert "<s>tool\nadd call00001: 5</s>\n<s>tool\nmul call00002: 6</s>\n<s>assistant\n" in prompts[-1]
    assert session.history[-1] == {"role": "assistant", "content": "5 and 6"}


def test_result_from_a_file(tmp_path: Path) -> None:
    """Guards against /result @FILE sending the file name instead of its contents, or an unreadable file
    ending the chat with a traceback instead of one line."""
    (tmp_path / "r.json").write_text('{"sum": 5}\n', encoding="utf-8")
    assert read_tool_result(f"@{tmp_path / 'r.json'}") == '{"sum": 5}'
    assert read_tool_result("  5 ") == "5"
    with pytest.raises(ToolResultError, match="cannot read"):
        read_tool_result(f"@{tmp_path / 'missing.json'}")
    with pytest.raises(ToolResultError, match="/result TEXT"):
        read_tool_result(" ")
