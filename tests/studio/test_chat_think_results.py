"""Thinking templates, folded reasoning and tool results in the Chat tab and the terminal chat, with the shared
trained model (as is, or exported with a Qwen3-style template), its real tokenizer and the Textual pilot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.message import Message
from textual.widgets import Collapsible, Switch
from textual.widgets._collapsible import CollapsibleTitle

from engine.chat.session import ChatSession
from engine.data.tokenizer import load_tokenizer
from studio.app import StudioApp
from studio.chat_console import think_command
from studio.messages import ChatDone
from studio.widgets.chat.chat_log import ChatLog
from tests.studio.test_chat import open_chat
from tests.support.chat_templates import model_with_template, qwen3_style_template, script
from tests.support.wait import until

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


@pytest.fixture(scope="module")
def qwen3_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model as a Hugging Face folder whose tokenizer adopted a Qwen3-style thinking template."""
    return model_with_template(trained_run, tmp_path_factory.mktemp("qwen3") / "model", qwen3_style_template("<s>", "</s>"))


def held(monkeypatch: pytest.MonkeyPatch, gate: threading.Event) -> None:
    """Replies pause in the worker thread after their first decoded piece until `gate` is set."""
    import engine.chat.session

    real = engine.chat.session.stream_text

    def stream_text(tokenizer: Any, tokens: Iterator[int]) -> Iterator[str]:
        for index, piece in enumerate(real(tokenizer, tokens)):
            if index == 1:
                gate.wait(30)
            yield piece

    monkeypatch.setattr(engine.chat.session, "stream_text", stream_text)


async def test_thinking_template_reasoning_streams_open_then_folds(qwen3_model: Path, trained_run: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against a Qwen3-style reply (its prompt opened `<think>`) shown as the answer, against the
    reasoning block staying open over the answer once the reply is done (or closed while it streams), its
    title lacking the token count, click/enter not toggling it, and /think not reaching the template."""
    posted: list[Message] = []
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 36), message_hook=posted.append) as pilot:
        pane = await open_chat(pilot)
        session = ChatSession.open(qwen3_model)
        session.stop_ids = set()  # the whole max-tokens budget: long enough to be caught mid-stream
        pane.overrides[0] = qwen3_model
        pane.sessions[0], pane.loaded[0] = session, qwen3_model  # loaded here, so the test can hold its stream
        gate = threading.Event()
        held(monkeypatch, gate)
        await pilot.press(*"hi", "enter")
        log = app.query_one("#chat-log-0", ChatLog)
        await until(pilot, lambda: log.pieces >= 1 and log.query(Collapsible), timeout=60, what="the first piece")
        folding = log.query_one(Collapsible)
        assert not folding.collapsed and folding.title == "reasoning…"  # open while it streams
        gate.set()
        await until(pilot, lambda: not pane.busy, timeout=60, what="the reply")
        await pilot.pause()

        done = next(m for m in posted if isinstance(m, ChatDone))
        assert log.raw_text and "</think>" not in log.raw_text  # the tiny model never closes it: all reasoning
        assert log.reply_text == "" and log.parser.reasoning == log.raw_text.strip()
        assert done.reasoning_tokens == 12  # max tokens, every one inside the think block
        assert folding.collapsed and folding.title == "reasoning (12 tokens)"
        assert session.history == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]

        title = folding.query_one(CollapsibleTitle)
        await pilot.click(title)
        await pilot.pause()
        assert not folding.collapsed  # a click opens it
        title.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert folding.collapsed  # enter folds it again

        await pilot.click("#chat-input")  # back to typing
        await pilot.press(*"/think off", "enter")
        await pilot.pause()
        assert not pane.query_one("#s-thinking", Switch).value
        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: not pane.busy, timeout=60, what="the reply without thinking")
        assert session.thinking is False
        assert session.prompt_text([]).endswith("<s>assistant\n<think>\n\n</think>\n\n")
        assert log.reply_text and len(log.query(Collapsible)) == 1  # the answer, and no new reasoning block
        assert session.history[-1] == {"role": "assistant", "content": log.reply_text}


async def test_result_answers_a_tool_call_and_the_model_goes_on(trained_run: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against /result accepted with no call waiting, a result file sent as its name, and a result
    that does not make the model go on: the log shows call, result and the continued answer, and the
    session holds assistant(tool_calls) -> tool -> assistant as minimind's data does."""
    tokenizer = load_tokenizer(trained_run / "checkpoints" / "sft" / "latest" / "tokenizer")
    prompts = script(tokenizer, monkeypatch, ["hello", CALL, "It is 5."])
    (tmp_path / "result.json").write_text('{"sum": 5}\n', encoding="utf-8")
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 36)) as pilot:
        pane = await open_chat(pilot)
        notes: list[str] = []
        monkeypatch.setattr(pane, "notify", lambda message, **kwargs: notes.append(message))
        pane.send("/result 5")  # nothing loaded, nothing asked
        assert notes and "no tool call to answer" in notes[-1]

        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: not pane.busy, timeout=60, what="the first reply")
        session = pane.sessions[0]
        pane.send("/result 5")  # the reply called no tool
        assert "no tool call to answer" in notes[-1] and session.history[-1]["role"] == "assistant"

        await pilot.press(*"2 plus 3?", "enter")
        await until(pilot, lambda: not pane.busy, timeout=60, what="the tool call")
        log = app.query_one("#chat-log-0", ChatLog)
        assert [str(w.render()) for w in log.query(".tool-call")] == ['tool call: add({"a": 2, "b": 3})']
        pane.send(f"/result @{tmp_path / 'result.json'}")
        await until(pilot, lambda: not pane.busy and log.reply_text == "It is 5.", timeout=60, what="the continuation")

        assert [str(w.render()) for w in log.query(".tool-result")] == ['tool result add({"a": 2, "b": 3}): {"sum": 5}']
        assert session.history[2:] == [
            {"role": "user", "content": "2 plus 3?"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
            {"role": "tool", "content": '{"sum": 5}'},
            {"role": "assistant", "content": "It is 5."}]
        assert prompts[-1].endswith('<s>tool\n{"sum": 5}</s>\n<s>assistant\n')  # the model went on after the result


def test_terminal_chat_thinks_answers_calls_and_continues(qwen3_model: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against the terminal chat printing a prompt-opened think block as the answer, /think not
    reaching the template, /result refused without a clear line (or accepted with no call), and a result
    that does not let the model continue."""
    import studio.cli

    prompts = script(load_tokenizer(qwen3_model), monkeypatch,
                     ["the user greets me\n</think>\n\nhello", CALL, "It is 5."])
    (tmp_path / "result.json").write_text("5", encoding="utf-8")
    lines = iter(["/result 5", "hi", "/think", "/think off", "2 plus 3?", f"/result @{tmp_path / 'result.json'}", "/quit"])
    console = Console(record=True, width=200, color_system=None)

    def read_line(prompt: str = "") -> str:
        console.print(prompt, end="")
        return next(lines)

    monkeypatch.setattr(console, "input", read_line)
    monkeypatch.setattr(studio.cli, "console", console)
    assert studio.cli.main(["chat", str(qwen3_model), "--max-new-tokens", "8"]) == 0
    out = console.export_text()
    assert "thinking switch (/think on|off)" in out
    assert "result: no tool call to answer" in out
    assert "ai> thinking: the user greets me\nhello\n" in out
    assert "(thinking: the template's default; /think on|off)" in out and "(thinking off from the next reply on)" in out
    assert 'tool call: add({"a": 2, "b": 3})\n(give the tool\'s result with /result TEXT or /result @FILE)' in out
    assert out.rstrip().endswith("ai> It is 5.\nyou>")
    assert prompts[0].endswith("<s>assistant\n<think>\n")
    assert prompts[2].endswith("<s>user\n<tool_response>\n5\n</tool_response></s>\n<s>assistant\n<think>\n\n</think>\n\n")


def test_think_command_refuses_templates_without_the_switch() -> None:
    """Guards against /think pretending to change a model whose template has no enable_thinking."""

    class Plain:
        takes_thinking = False
        thinking = None

    assert think_command("off", Plain()) == (False, "think: this model's chat template has no enable_thinking switch")
