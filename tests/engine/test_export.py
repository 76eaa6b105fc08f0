"""Hugging Face format out and back in, and chat over a real trained checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.chat.session import ChatSession, load_model
from engine.checkpoints.hf_export import export_hf
from engine.checkpoints.lookup import resolve_checkpoint
from engine.config import ModelConfig
from engine.errors import ExportError


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_hf(resolve_checkpoint(str(trained_run)), tmp_path_factory.mktemp("hf") / "model")


def test_transformers_loads_export_without_remote_code_and_logits_match(trained_run: Path, exported: Path) -> None:
    """Guards against an export that needs trust_remote_code or silently changes the math."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(exported).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ours = load_model(resolve_checkpoint(str(trained_run)))
    ids = torch.randint(3, ours.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(ids).logits
        got = hf(ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_exported_tokenizer_renders_the_same_chat(trained_run: Path, exported: Path) -> None:
    """Guards against the exported chat template drifting from what SFT trained on."""
    from transformers import AutoTokenizer

    session = ChatSession.open(trained_run)
    session.system_prompt = "be brief"
    session.history = [{"role": "user", "content": "1 plus 2?"}, {"role": "assistant", "content": "3"}]
    messages = [{"role": "system", "content": "be brief"}, *session.history, {"role": "user", "content": "4 plus 4?"}]
    hf_ids = AutoTokenizer.from_pretrained(exported).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert session.tokenizer.encode(hf_ids, add_special_tokens=False) == session.prompt_ids("4 plus 4?")
    assert hf_ids.endswith("<s>user\n4 plus 4?</s>\n<s>assistant\n")


def test_export_imports_back_as_a_starting_checkpoint(trained_run: Path, exported: Path) -> None:
    """Guards against from_weight = <HF dir> loading different weights than were exported."""
    original = load_model(resolve_checkpoint(str(trained_run)))
    imported_ckpt = resolve_checkpoint(str(exported))
    assert imported_ckpt.model_config.architecture() == original.config.architecture()
    imported = load_model(imported_ckpt)
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, imported.state_dict()[name]), name


def test_moe_export_is_refused_with_a_reason(trained_run: Path, tmp_path: Path) -> None:
    """Guards against exporting an MoE model into a Llama config that drops its experts."""
    ckpt = resolve_checkpoint(str(trained_run))
    ckpt.state = {**ckpt.state, "model": ModelConfig(**{**ckpt.state["model"], "use_moe": True}).model_dump()}
    with pytest.raises(ExportError, match="mixture-of-experts"):
        export_hf(ckpt, tmp_path / "moe")


def test_pretrain_checkpoint_chats_as_continuation_and_sft_as_chat(trained_run: Path) -> None:
    """Guards against wrapping a pretrain model's prompt in a chat template it never saw."""
    pre = ChatSession.open(trained_run / "checkpoints" / "pretrain" / "latest")
    sft = ChatSession.open(trained_run)
    assert pre.mode == "continue" and sft.mode == "chat"
    assert pre.prompt_ids("the cat")[0] == 1 and "<s>assistant" not in pre.tokenizer.decode(pre.prompt_ids("the cat"))
    answer = sft.answer("1 plus 2?")
    assert sft.history[-1] == {"role": "assistant", "content": answer}
    sft.clear()
    assert sft.history == []


def test_cli_chat_streams_and_obeys_commands(trained_run: Path) -> None:
    """Guards against the terminal chat crashing on piped input or ignoring /clear and /quit."""
    script = "1 plus 2?\n/clear\n/system be brief\nhello\n/quit\nnever read\n"
    done = subprocess.run([sys.executable, "-m", "studio.cli", "chat", str(trained_run), "--max-new-tokens", "8"],
                          input=script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ai>") == 2 and "conversation cleared" in done.stdout


def test_cli_export_and_missing_checkpoint_error(trained_run: Path, tmp_path: Path) -> None:
    """Guards against a traceback (instead of one clear line) for a wrong checkpoint path."""
    ok = subprocess.run([sys.executable, "-m", "studio.cli", "export", str(trained_run), str(tmp_path / "out")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert load_file(str(tmp_path / "out" / "model.safetensors"))
    bad = subprocess.run([sys.executable, "-m", "studio.cli", "export", str(tmp_path / "nope"), str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no checkpoint found" in bad.stderr and "Traceback" not in bad.stderr


def test_a_stopped_reply_keeps_the_partial_turn(trained_run: Path) -> None:
    """Guards against a reply stopped by the user vanishing from the conversation the model sees next."""
    from engine.model.generate import Sampling

    session = ChatSession.open(trained_run)
    stream = session.reply("1 plus 2?", Sampling(temperature=1.0, max_new_tokens=50, seed=0))
    first = next(stream)
    stream.close()
    assert session.history == [{"role": "user", "content": "1 plus 2?"}, {"role": "assistant", "content": first}]


# The built-in format for tools, calls, results and reasoning, as the README documents it.
TOOL_CHAT = [
    {"role": "system", "content": "You can call tools.", "tools": '[{"name": "add", "parameters": {"type": "object"}}]'},
    {"role": "user", "content": "2 plus 3?"},
    {"role": "assistant", "content": "", "reasoning_content": "use the tool",
     "tool_calls": '[{"name": "add", "arguments": {"a": 2, "b": 3}}]'},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "5"},
]
TOOL_CHAT_RENDERED = (
    "<s>system\nYou can call tools.\n\n# Tools\n<tools>\n"
    '{"name": "add", "parameters": {"type": "object"}}\n</tools></s>\n'
    "<s>user\n2 plus 3?</s>\n"
    '<s>assistant\n<think>\nuse the tool\n</think>\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call></s>\n'
    "<s>tool\n5</s>\n"
    "<s>assistant\n5</s>\n"
)


def test_exported_tokenizer_renders_tools_calls_results_and_reasoning(trained_run: Path, exported: Path) -> None:
    """Guards against the documented tool / reasoning format living only in the engine: an exported model
    must get from AutoTokenizer the same text its SFT cache was rendered from."""
    from transformers import AutoTokenizer

    from engine.data.messages import parse_conversation
    from engine.data.sft_mask import SpanFinder, tokenizer_render
    from engine.data.tokenizer import load_tokenizer
    from tests.engine.chat_fixtures import RECORDS, minimind_messages

    hf = AutoTokenizer.from_pretrained(exported)
    engine_render = SpanFinder(tokenizer_render(load_tokenizer(trained_run / "tokenizer")))
    for record in [{"conversations": TOOL_CHAT}, *RECORDS]:
        messages, tools = minimind_messages(record)
        assert hf.apply_chat_template(messages, tools=tools, tokenize=False) == engine_render(parse_conversation(record))[0]
    messages, tools = minimind_messages({"conversations": TOOL_CHAT})
    assert hf.apply_chat_template(messages, tools=tools, tokenize=False) == TOOL_CHAT_RENDERED
    assert hf.apply_chat_template(messages[:2], tools=tools, tokenize=False, add_generation_prompt=True).endswith(
        "<s>user\n2 plus 3?</s>\n<s>assistant\n")


def test_the_format_lists_match_the_writers_type_maps() -> None:
    """Guards against a dtype that the CLI and the export dialog offer (engine.checkpoints.formats, kept
    torch-free) but a writer has no torch or GGUF type for (a KeyError half-way through an export), or one a
    writer handles that nobody can choose."""
    from engine.checkpoints import gguf_export
    from engine.checkpoints.formats import FORMATS, GGUF_DTYPES, HF_DTYPES
    from engine.checkpoints.hf_export import EXPORT_DTYPES

    assert set(EXPORT_DTYPES) == set(HF_DTYPES) and len(EXPORT_DTYPES) == len(HF_DTYPES)
    assert set(gguf_export._MATRIX_TYPES) == set(GGUF_DTYPES) == set(gguf_export._FILE_TYPES)
    assert gguf_export.GGUF_DTYPES is GGUF_DTYPES  # the writer checks against the same tuple it is offered from
    assert all(choice.default_dtype in choice.dtypes for choice in FORMATS.values())
