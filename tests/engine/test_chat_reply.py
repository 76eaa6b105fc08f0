"""Replies with reasoning and tool calls: the streaming parser, the history it leaves, tools in the prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.chat.reply import (
    ReplyParser,
    ToolCall,
    ToolSpecError,
    parse_reply,
    read_tool_specs,
)

REPLY = ('<think>\nthe user wants 2+3, so call add — über simple\n</think>\n'
         'Let me add them.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>')


def collect(pieces: list[str]) -> tuple[ReplyParser, list]:
    parser = ReplyParser()
    events = [e for piece in pieces for e in parser.feed(piece)] + parser.finish()
    return parser, events


def test_a_complete_reply_splits_into_reasoning_answer_and_call() -> None:
    """Guards against reasoning shown as part of the answer, and the template's newlines around tags
    leaking into what the user reads."""
    parsed = parse_reply(REPLY)
    assert parsed.reasoning == "the user wants 2+3, so call add — über simple"
    assert parsed.answer == "Let me add them."
    assert parsed.tool_calls == [ToolCall("add", {"a": 2, "b": 3}, '{"name": "add", "arguments": {"a": 2, "b": 3}}')]
    assert parsed.tool_calls[0].label() == 'add({"a": 2, "b": 3})'


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_any_split_of_the_stream_gives_the_same_parts(size: int) -> None:
    """Guards against a tag cut across two pieces (`<thi` + `nk>`, one character at a time) being shown
    as text, or text being lost or doubled while a possible tag is held back."""
    whole = parse_reply(REPLY)
    parser, events = collect([REPLY[i:i + size] for i in range(0, len(REPLY), size)])
    assert (parser.reasoning, parser.answer, parser.tool_calls) == (whole.reasoning, whole.answer, whole.tool_calls)
    assert "".join(e[1] for e in events if isinstance(e, tuple) and e[0] == "reasoning") == whole.reasoning
    assert "".join(e[1] for e in events if isinstance(e, tuple) and e[0] == "answer") == whole.answer
    assert [e for e in events if isinstance(e, ToolCall)] == whole.tool_calls


def test_plain_text_passes_through_and_a_lone_angle_bracket_is_released() -> None:
    """Guards against a model without tags losing characters: `<` that is not a tag must still show."""
    parser = ReplyParser()
    assert parser.feed("a <") == [("answer", "a")]  # ' <' could start a tag: held back
    assert parser.feed(" b") == [("answer", " < b")]
    assert parser.finish() == [] and parser.answer == "a < b"


def test_unclosed_think_is_reasoning_and_an_unclosed_or_bad_call_is_kept_raw() -> None:
    """Guards against a reply cut off by max tokens inside a tag vanishing, and a malformed call crashing
    the chat or being shown as if it had parsed."""
    cut = parse_reply("<think>still thinking")
    assert cut.reasoning == "still thinking" and cut.answer == ""
    bad = parse_reply("ok <tool_call>{not json}</tool_call><tool_call>{\"name\": \"f\"")
    assert bad.answer == "ok"
    assert [c.name for c in bad.tool_calls] == [None, None]
    assert [c.label() for c in bad.tool_calls] == ["{not json}", '{"name": "f"']


def test_history_keeps_answer_and_calls_but_not_reasoning() -> None:
    """Guards against reasoning being fed back into the next prompt (the model never saw its old thinking
    in training, and it eats the context) and against the tool call being dropped from the history."""
    message = parse_reply(REPLY).assistant_message()
    assert message == {"role": "assistant", "content": "Let me add them.",
                       "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}
    assert parse_reply("hi").assistant_message() == {"role": "assistant", "content": "hi"}
    raw = parse_reply("<tool_call>oops</tool_call>").assistant_message()
    assert raw == {"role": "assistant", "content": "<tool_call>\noops\n</tool_call>"}


def test_tool_specs_file_errors_are_one_line(tmp_path: Path) -> None:
    """Guards against a bad /tools file crashing the chat with a traceback instead of one clear line."""
    good = tmp_path / "tools.json"
    good.write_text(json.dumps([{"name": "add", "parameters": {"type": "object"}}]))
    assert read_tool_specs(good)[0]["name"] == "add"
    for name, text in (("bad.json", "[{"), ("num.json", "[1, 2]"), ("empty.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ToolSpecError) as error:
            read_tool_specs(tmp_path / name)
        assert name in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ToolSpecError, match="cannot read"):
        read_tool_specs(tmp_path / "missing.json")


def test_session_renders_tools_and_keeps_calls_without_reasoning(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against tool specs never reaching the prompt's system turn, and against the session's
    history keeping the reasoning of a streamed reply (or losing its tool call)."""
    import engine.chat.session
    from engine.chat.session import ChatSession
    from engine.eval.heldout import exact_match

    session = ChatSession.open(trained_run)
    assert session.mode == "chat"
    plain = session.tokenizer.decode(session.prompt_ids("2 plus 3?"))
    assert "<tools>" not in plain
    session.tools = [{"name": "add", "parameters": {"type": "object"}}]
    prompt = session.tokenizer.decode(session.prompt_ids("2 plus 3?"))
    assert '# Tools\n<tools>\n{"name": "add", "parameters": {"type": "object"}}\n</tools>' in prompt
    monkeypatch.setattr(engine.chat.session, "stream_text", lambda tokenizer, tokens: iter([REPLY[:9], REPLY[9:40], REPLY[40:]]))
    assert session.answer("2 plus 3?") == REPLY  # the stream itself is raw: the caller splits it
    assert session.history == [{"role": "user", "content": "2 plus 3?"}, parse_reply(REPLY).assistant_message()]
    follow_up = session.tokenizer.decode(session.prompt_ids("and now?"))
    assert "<tool_call>" in follow_up and "über simple" not in follow_up
    scored = exact_match(session, [{"messages": [{"role": "user", "content": "2 plus 3?"}], "answer": "Let me add them."}])
    assert scored["correct"] == 1  # held-out answers are scored without the reasoning in front of them


def test_clear_while_a_reply_streams_keeps_the_turn_out_of_the_new_conversation(trained_run: Path) -> None:
    """Guards against the bug where clearing the chat mid-reply let the reply's generator, finishing
    afterwards, put the cleared question and its partial answer back into the history (the model then
    answered the next question in a conversation the user had wiped), both when the stream runs to its
    end after the clear and when it is closed early (the studio's stop)."""
    from engine.chat.session import ChatSession
    from engine.model.generate import Sampling

    session = ChatSession.open(trained_run)
    assert session.mode == "chat"
    session.stop_ids = set()  # no early end of text: the reply is long enough to be cut in the middle
    sampling = Sampling(temperature=1.0, max_new_tokens=16, seed=3)

    stream = session.reply("tell me a story", sampling)
    first = next(stream)  # mid-stream
    session.clear()
    rest = list(stream)  # the remaining pieces arrive and the generator finishes after the clear
    assert first and rest and session.history == []

    stream = session.reply("and another one", sampling)
    next(stream)
    session.clear()
    stream.close()  # stopped early, as the studio's worker does when the chat is cleared
    assert session.history == []

    answer = session.answer("hello", sampling)  # the next question starts a clean conversation
    assert session.history == [{"role": "user", "content": "hello"}, parse_reply(answer).assistant_message()]
    assert "story" not in session.tokenizer.decode(session.prompt_ids("again"))


def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(trained_run: Path) -> None:
    """Guards against a long chat crashing or silently cutting its prompt mid-message: the oldest whole
    messages leave the history (with a notice) until the prompt and the reply fit the context, and a
    single message longer than the context is read from its end, said so, without an error."""
    from engine.chat.session import ChatSession
    from engine.model.generate import Sampling

    session = ChatSession.open(trained_run)
    session.model.config.max_position_embeddings = 160  # a small context, so a few turns overflow it
    sampling = Sampling(temperature=0.0, max_new_tokens=12)
    room = 160 - 12
    notices = []
    for i in range(10):
        stream = session.reply(f"question {i}: where does the river of the island begin and end?", sampling)
        "".join(stream)
        notices.append(stream.notice)
        assert len(session.prompt_ids("next")) <= room + 40  # the history alone now fits with room to spare
    assert any(n and "oldest message(s) were dropped" in n for n in notices)
    assert session.history[0]["role"] == "user" and len(session.history) < 20

    huge = session.reply("word " * 400, sampling)
    assert "".join(huge) is not None and huge.cut_prompt and "only its end was read" in (huge.notice or "")


def test_a_tokenizer_bigger_than_the_model_vocabulary_is_refused(trained_run: Path, tmp_path: Path) -> None:
    """Guards against chatting through a tokenizer that is not the model's (a swapped tokenizer/ folder):
    ids past the embedding table would crash mid-reply or silently read the wrong rows."""
    import shutil

    from engine.chat.session import ChatSession
    from engine.checkpoints.checkpoint import read_checkpoint
    from engine.data.tokenizer import train_tokenizer
    from engine.errors import CheckpointError

    ckpt = read_checkpoint(trained_run / "checkpoints" / "sft" / "latest")
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt.path, copy)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"line {i} with words {i * 7} and more {i % 13}"}) + "\n"
                              for i in range(400)), encoding="utf-8")
    shutil.rmtree(copy / "tokenizer")
    train_tokenizer(corpus, copy / "tokenizer", ckpt.model_config.vocab_size + 100, heldout_lines=0)
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ tokens but the model's vocabulary is"):
        ChatSession(read_checkpoint(copy))
