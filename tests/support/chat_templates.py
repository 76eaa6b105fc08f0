"""Chat templates the chat must handle beyond the built-in one, and the shared trained checkpoint given them.

QWEN3_STYLE is our own jinja text written to behave like the templates of Qwen3-style thinking models: tool
specs in a system turn, calls in `<tool_call>` blocks, consecutive tool results gathered in one user turn
as `<tool_response>` blocks, and a generation prompt that *opens* a think block (`<think>\n`), or closes
an empty one when `enable_thinking=false`. Its turn markers are parameters, so a tiny model whose
tokenizer ends turns with `</s>` keeps stopping where it learned to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest


def qwen3_style_template(bos: str = "<|im_start|>", eos: str = "<|im_end|>") -> str:
    return r"""
{%- if tools -%}
  {{- 'BOS' + 'system\n' -}}
  {%- if messages[0].role == 'system' -%}{{- messages[0].content + '\n\n' -}}{%- endif -%}
  {{- '# Tools\n\nYou may call one or more functions.\n<tools>' -}}
  {%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}
  {{- '\n</tools>\n\nReturn each call as <tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>EOS\n' -}}
{%- elif messages[0].role == 'system' -%}
  {{- 'BOS' + 'system\n' + messages[0].content + 'EOS\n' -}}
{%- endif -%}
{%- for message in messages -%}
  {%- set content = message.content if message.content is string else '' -%}
  {%- if message.role == 'user' or (message.role == 'system' and not loop.first) -%}
    {{- 'BOS' + message.role + '\n' + content + 'EOS\n' -}}
  {%- elif message.role == 'assistant' -%}
    {{- 'BOS' + 'assistant\n' -}}
    {%- if message.reasoning_content is string and message.reasoning_content -%}
      {{- '<think>\n' + message.reasoning_content.strip('\n') + '\n</think>\n\n' -}}
    {%- endif -%}
    {{- content -}}
    {%- for call in (message.tool_calls or []) -%}
      {%- if content or not loop.first -%}{{- '\n' -}}{%- endif -%}
      {%- set fn = call.function if call.function else call -%}
      {{- '<tool_call>\n{"name": "' + fn.name + '", "arguments": ' -}}
      {{- fn.arguments if fn.arguments is string else (fn.arguments | tojson) -}}
      {{- '}\n</tool_call>' -}}
    {%- endfor -%}
    {{- 'EOS\n' -}}
  {%- elif message.role == 'tool' -%}
    {%- if loop.first or loop.previtem.role != 'tool' -%}{{- 'BOS' + 'user' -}}{%- endif -%}
    {{- '\n<tool_response>\n' + content + '\n</tool_response>' -}}
    {%- if loop.last or loop.nextitem.role != 'tool' -%}{{- 'EOS\n' -}}{%- endif -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- 'BOS' + 'assistant\n' -}}
  {%- if enable_thinking is defined and enable_thinking is false -%}
    {{- '<think>\n\n</think>\n\n' -}}
  {%- else -%}
    {{- '<think>\n' -}}
  {%- endif -%}
{%- endif -%}
""".strip().replace("BOS", bos).replace("EOS", eos)


def model_with_template(run_dir: Path, dest: Path, template: str) -> Path:
    """The run's SFT checkpoint exported as a Hugging Face model folder (what `chat` takes from elsewhere)
    whose tokenizer carries `template`: a model that came with someone else's chat template. The weights
    are the trained ones; a checkpoint of ours is not edited (its files are hashed at save time)."""
    from engine.checkpoints.hf_export import export_hf
    from engine.checkpoints.lookup import resolve_checkpoint

    export_hf(resolve_checkpoint(str(run_dir)), dest)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    return dest


def script(tokenizer: Any, monkeypatch: pytest.MonkeyPatch, replies: list[str]) -> list[str]:
    """Every chat model says `replies` in turn, each through the real `tokenizer` (encoded, then streamed and
    decoded as generated tokens are); returns the decoded prompts it was given. All around generation is real."""
    import engine.chat.session

    prompts: list[str] = []

    def generate(model: Any, prompt: list[int], sampling: Any, stop_ids: Any, use_cache: bool = True) -> Iterator[int]:
        prompts.append(tokenizer.decode(prompt))
        yield from tokenizer.encode(replies.pop(0), add_special_tokens=False)

    monkeypatch.setattr(engine.chat.session, "generate", generate)
    return prompts
