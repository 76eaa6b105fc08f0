"""Test data for the full SFT message schema: minimind-format records of every message kind, and a
minimind-style tokenizer folder (written here, nothing downloaded).

The folder is shaped like the one minimind ships in model/: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2 as
special tokens, <tool_call>/<think>/<tool_response> and their closers as added tokens, and a Qwen-style chat
template with tools. The template is our own text written to render minimind's format: tool specs in a
system turn, every assistant turn opening a <think> block, calls in <tool_call> blocks, consecutive tool
results gathered in one user turn, and a generation prompt that closes an empty <think> block.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

MINIMIND_STYLE_TEMPLATE = r"""
{%- macro turn(role, body) -%}{{ '<|im_start|>' + role + '\n' + body + '<|im_end|>\n' }}{%- endmacro -%}
{%- if tools -%}
  {%- set intro = (messages[0].content + '\n\n') if messages[0].role == 'system' else '' -%}
  {%- set specs = namespace(text='') -%}
  {%- for tool in tools -%}{%- set specs.text = specs.text + '\n' + (tool | tojson) -%}{%- endfor -%}
  {{ turn('system', intro + '# Tools\n\nYou may call the functions listed in <tools></tools>:\n<tools>' + specs.text
          + '\n</tools>\n\nWrite each call as <tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>') }}
{%- elif messages[0].role == 'system' -%}
  {{ turn('system', messages[0].content) }}
{%- endif -%}
{%- for m in messages -%}
  {%- set body = m.content if m.content is string else '' -%}
  {%- if m.role == 'user' or (m.role == 'system' and not loop.first) -%}
    {{ turn(m.role, body) }}
  {%- elif m.role == 'assistant' -%}
    {%- set think = m.reasoning_content if m.reasoning_content is string else '' -%}
    {%- set calls = namespace(text='') -%}
    {%- for call in (m.tool_calls or []) -%}
      {%- set fn = call.function if call.function else call -%}
      {%- set args = fn.arguments if fn.arguments is string else (fn.arguments | tojson) -%}
      {%- set calls.text = calls.text + ('\n' if (body or not loop.first) else '')
          + '<tool_call>\n{"name": "' + fn.name + '", "arguments": ' + args + '}\n</tool_call>' -%}
    {%- endfor -%}
    {{ turn('assistant', '<think>\n' + think.strip('\n') + '\n</think>\n\n' + body.lstrip('\n') + calls.text) }}
  {%- elif m.role == 'tool' -%}
    {%- if loop.first or loop.previtem.role != 'tool' -%}{{ '<|im_start|>user' }}{%- endif -%}
    {{ '\n<tool_response>\n' + body + '\n</tool_response>' }}
    {%- if loop.last or loop.nextitem.role != 'tool' -%}{{ '<|im_end|>\n' }}{%- endif -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{%- endif -%}
""".strip()

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "查询城市天气",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALC = {"name": "calculate", "description": "evaluate an arithmetic expression",
        "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}}}

# One record per message kind, written the way minimind's files write them (JSON strings and lists).
RECORDS: list[dict[str, Any]] = [
    {"conversations": [  # plain, with a system prompt
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "你好，请介绍一下你自己"},
        {"role": "assistant", "content": "我是 minimind，一个小模型。"}]},
    {"conversations": [  # two turns, no system prompt
        {"role": "user", "content": "what is two plus two"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "and three plus three"},
        {"role": "assistant", "content": "six"}]},
    {"conversations": [  # reasoning
        {"role": "user", "content": "红色和蓝色混合是什么颜色"},
        {"role": "assistant", "reasoning_content": "红加蓝得到紫。", "content": "紫色。"}]},
    {"conversations": [  # tools and tool_calls as JSON strings, empty content on the calling turn, a tool result
        {"role": "system", "content": "你可以调用工具。", "tools": json.dumps([WEATHER], ensure_ascii=False)},
        {"role": "user", "content": "北京天气怎么样"},
        {"role": "assistant", "content": "",
         "tool_calls": json.dumps([{"name": "get_weather", "arguments": {"city": "北京"}}], ensure_ascii=False)},
        {"role": "tool", "content": "{\"weather\": \"晴\", \"temp\": 25}"},
        {"role": "assistant", "content": "北京今天晴，25 度。"}]},
    {"conversations": [  # tools and calls as lists, OpenAI wrapping, string arguments, two results in a row, reasoning
        {"role": "system", "content": "", "tools": [CALC, WEATHER]},
        {"role": "user", "content": "compute 6 times 7 and the weather in Paris"},
        {"role": "assistant", "content": "Let me check both.", "reasoning_content": "two tools are needed",
         "tool_calls": [{"type": "function", "function": {"name": "calculate", "arguments": "{\"expr\": \"6*7\"}"}},
                        {"name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "content": "42"},
        {"role": "tool", "content": "rain, 12 C"},
        {"role": "assistant", "content": "6 times 7 is 42; Paris has rain at 12 C."}]},
    {"conversations": [  # keys written as null by a datasets export, null content beside a call
        {"role": "system", "content": "tools below", "tools": json.dumps([CALC]), "tool_calls": None, "reasoning_content": None},
        {"role": "user", "content": "what is 9 minus 4", "tools": None, "tool_calls": None, "reasoning_content": None},
        {"role": "assistant", "content": None, "tools": None, "reasoning_content": None,
         "tool_calls": json.dumps([{"name": "calculate", "arguments": {"expr": "9-4"}}])},
        {"role": "tool", "content": "5", "tools": None, "tool_calls": None, "reasoning_content": None},
        {"role": "assistant", "content": "five", "tools": None, "tool_calls": None, "reasoning_content": None}]},
]


def minimind_messages(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """What minimind's SFT loader hands apply_chat_template: the system message's tools decoded into
    `tools`, string tool_calls decoded on their message, everything else as it is in the file."""
    messages, tools = [], None
    for message in record["conversations"]:
        message = dict(message)
        if message.get("role") == "system" and message.get("tools"):
            tools = json.loads(message["tools"]) if isinstance(message["tools"], str) else message["tools"]
        if isinstance(message.get("tool_calls"), str) and message["tool_calls"]:
            message["tool_calls"] = json.loads(message["tool_calls"])
        messages.append(message)
    return messages, tools


def corpus_texts() -> list[str]:
    """Text covering the records' words, so the small BPE vocabularies below have merges for them."""
    texts = []
    for record in RECORDS:
        for message in record["conversations"]:
            texts += [str(message.get(key) or "") for key in ("content", "reasoning_content", "tools", "tool_calls")]
    return [t for t in texts if t] * 20


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def make_minimind_style_dir(directory: Path, vocab_size: int = 400) -> Path:
    """A tokenizer folder laid out like minimind's model/ (tokenizer.json + tokenizer_config.json)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in MARKUP])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
        "add_prefix_space": False, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False, "model_max_length": 32768, "chat_template": MINIMIND_STYLE_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    return directory
