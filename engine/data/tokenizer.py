"""Stage 1: train a ByteLevel BPE tokenizer (or adopt an existing one) and save it as a Hugging Face directory.

The directory follows the minimind tutorial's layout (`tokenizer.json` + `tokenizer_config.json`, special
tokens <unk>=0, <s>=1, </s>=2, a chat template on `<s>role\\n...</s>\\n`), so
`transformers.AutoTokenizer.from_pretrained(dir)` and `apply_chat_template` work on it with no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.atomic import publish_dir, remove_dead_temporaries, write_json_atomic, write_text_atomic
from engine.data.jsonl import ReadStats, iter_jsonl
from engine.data.sft_mask import tokenizer_render
from engine.data.tokenizer_files import TOKENIZER_FILES, copy_tokenizer
from engine.errors import CheckpointError, DataError, PresetError

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2, in this order
UNK, BOS, EOS = SPECIAL_TOKENS
_FINGERPRINT_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def chat_template_for(bos: str, eos: str) -> str:
    """The built-in chat template: every message is `{bos}{role}\\n{body}{eos}\\n`, roles as in the data.

    - tools (apply_chat_template's tools=) open a system turn: the system prompt, a blank line, then
      `# Tools`, `<tools>`, one JSON spec per line, `</tools>`.
    - an assistant body is `<think>\\n{reasoning}\\n</think>\\n` (only when reasoning_content is given), the
      content, then each call as `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, a newline
      between pieces. OpenAI's {"function": {...}} wrapping is unwrapped; string arguments are kept as written.
    - a tool result is its own turn, role `tool`. The generation prompt is `{bos}assistant\\n`.
    Plain chats render exactly as before tools existed. Only filters llama.cpp's Jinja also has (tojson).
    """
    b, e = (token.replace("\\", "\\\\").replace("'", "\\'") for token in (bos, eos))
    return (
        "{%- if tools -%}"
        f"{{{{ '{b}system\\n' }}}}"
        "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] -%}"
        "{{ messages[0]['content'] + '\\n\\n' }}"
        "{%- endif -%}"
        "{{ '# Tools\\n<tools>' }}"
        "{%- for tool in tools -%}{{ '\\n' + (tool | tojson) }}{%- endfor -%}"
        f"{{{{ '\\n</tools>{e}\\n' }}}}"
        "{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if not (tools and loop.first and message['role'] == 'system') -%}"
        "{%- set content = message['content'] if message['content'] is string else '' -%}"
        f"{{{{ '{b}' + message['role'] + '\\n' }}}}"
        "{%- if message['role'] == 'assistant' and message['reasoning_content'] is string "
        "and message['reasoning_content'] -%}"
        "{{ '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n' }}"
        "{%- endif -%}"
        "{{ content }}"
        "{%- for call in (message['tool_calls'] or []) -%}"
        "{%- set fn = call['function'] if call['function'] else call -%}"
        "{%- set args = fn['arguments'] or {} -%}"
        "{{ ('\\n' if (content or not loop.first) else '') + '<tool_call>\\n{\"name\": ' + (fn['name'] | tojson)"
        " + ', \"arguments\": ' + (args if args is string else (args | tojson)) + '}\\n</tool_call>' }}"
        "{%- endfor -%}"
        f"{{{{ '{e}\\n' }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{ '{b}assistant\\n' }}}}{{%- endif -%}}"
    )


CHAT_TEMPLATE = chat_template_for(BOS, EOS)


@dataclass
class TokenizerReport:
    """What stage 1 produced, for events and the studio."""

    vocab_size: int
    source: Literal["trained", "adopted"]
    train_seconds: float = 0.0
    train_lines: int = 0
    train_chars: int = 0
    heldout_lines: int = 0
    heldout_chars: int = 0
    heldout_tokens: int = 0
    chars_per_token: float = 0.0
    """Held-out characters per token (0 when nothing was held out); higher means better compression."""
    skipped_lines: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenizer_config(model_max_length: int, chat_template: str = CHAT_TEMPLATE) -> dict[str, Any]:
    """tokenizer_config.json as in the minimind tutorial: no bos/eos added, pad = <unk>, no space clean-up."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
        "additional_special_tokens": [],
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": UNK,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "spaces_between_special_tokens": False,
        "sp_model_kwargs": {},
        "chat_template": chat_template,
    }


def _heldout_start(path: Path, heldout_lines: int, max_fraction: float = 1.0) -> tuple[int | None, int]:
    """(first physical line of the held-out tail, number of held-out lines), in one cheap pass without parsing.

    At most `max_fraction` of the non-blank lines are held out, so a tiny corpus still has text to train on.
    """
    tail: deque[int] = deque(maxlen=max(1, heldout_lines))
    count = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if raw.strip():
                tail.append(line_no)
                count += 1
    k = min(heldout_lines, int(count * max_fraction))
    return (tail[-k], k) if k > 0 else (None, 0)


def _measure(tokenizer: Any, path: Path, start_line: int | None, report: TokenizerReport) -> None:
    """Fill the held-out compression fields from the lines of `path` from `start_line` on."""
    if start_line is None:
        return
    texts = [rec["text"] for _, rec in iter_jsonl(path, "pretrain", "skip", ReadStats(), start_line=start_line)]
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    report.heldout_chars = sum(len(t) for t in texts)
    report.heldout_tokens = sum(len(e.ids) for e in encodings)
    if report.heldout_tokens:
        report.chars_per_token = round(report.heldout_chars / report.heldout_tokens, 4)


def _fresh_tmp(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out_dir.parent, f".{out_dir.name}.tmp-*")  # left by a process killed while saving
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def train_tokenizer(
    data_path: Path,
    out_dir: Path,
    vocab_size: int,
    *,
    heldout_lines: int = 200,
    max_train_chars: int | None = None,
    model_max_length: int = 32768,
    on_bad_line: Literal["error", "skip"] = "error",
) -> TokenizerReport:
    """Train ByteLevel BPE on the {"text": ...} lines of `data_path`, streamed, keeping the last lines out."""
    data_path, out_dir = Path(data_path), Path(out_dir)
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise PresetError(f"model.vocab_size {vocab_size} is below {len(SPECIAL_TOKENS) + 256} (3 special tokens + 256 bytes)")
    # Never hold out more than a tenth: a small corpus must still leave most of itself to train on.
    start_line, n_heldout = _heldout_start(data_path, heldout_lines, max_fraction=0.1)
    stats = ReadStats()
    report = TokenizerReport(vocab_size=0, source="trained", heldout_lines=n_heldout)

    def stream(batch_size: int = 1000) -> Iterator[list[str]]:
        batch: list[str] = []
        for _, rec in iter_jsonl(data_path, "pretrain", on_bad_line, stats, stop_line=start_line,
                                 setting="tokenizer.on_bad_line"):
            batch.append(rec["text"])
            report.train_lines += 1
            report.train_chars += len(rec["text"])
            if len(batch) == batch_size:
                yield batch
                batch = []
            if max_train_chars is not None and report.train_chars >= max_train_chars:
                break
        if batch:
            yield batch

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no text is ever out of vocabulary
        show_progress=False,
    )
    started = time.perf_counter()
    tok.train_from_iterator(stream(), trainer=trainer)
    report.train_seconds = round(time.perf_counter() - started, 3)
    report.skipped_lines = stats.skipped
    if report.train_lines == 0:
        raise DataError(f"{data_path}:1: no text to train the tokenizer on. Point tokenizer.data_path at a pretrain jsonl file.")
    for expected, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != expected:
            raise RuntimeError(f"special token {token} got id {tok.token_to_id(token)}, expected {expected}")

    tmp = _fresh_tmp(out_dir)
    write_text_atomic(tmp / "tokenizer.json", tok.to_str())
    write_json_atomic(tmp / "tokenizer_config.json", tokenizer_config(model_max_length))
    publish_dir(tmp, out_dir)
    loaded = load_tokenizer(out_dir)  # proves the saved directory is what transformers will see
    report.vocab_size = len(loaded)
    _measure(loaded, data_path, start_line, report)
    return report


def adopt_tokenizer(
    src_dir: Path, out_dir: Path, heldout_path: Path | None = None, heldout_lines: int = 200
) -> TokenizerReport:
    """Use an existing HF tokenizer directory (e.g. minimind's): copy its tokenizer files and check them.

    Only the folder is needed. chars/token is measured on the last lines of `heldout_path` (the preset's
    tokenizer.data_path) when that file is there; otherwise the report says it was skipped.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    tmp = _fresh_tmp(out_dir)
    if not copy_tokenizer(src_dir, tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        raise PresetError(f"{src_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); point tokenizer.from_dir "
                          "at a tokenizer directory")
    report = TokenizerReport(vocab_size=0, source="adopted")
    tok = load_tokenizer(tmp)
    if not (tmp / "tokenizer.json").exists():  # slow-only folder: keep the converted fast tokenizer
        tok.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        report.notes.append("tokenizer.json was missing; wrote the converted fast tokenizer")
    if not tok.chat_template:
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        config["chat_template"] = chat_template_for(tok.bos_token or BOS, tok.eos_token or EOS)
        write_json_atomic(config_path, config)
        report.notes.append(f"the tokenizer had no chat_template; wrote ours on {tok.bos_token or BOS}...{tok.eos_token or EOS}")
    publish_dir(tmp, out_dir)
    loaded = load_tokenizer(out_dir)
    report.vocab_size = len(loaded)
    if heldout_path is None or not Path(heldout_path).is_file():
        where = f" ({heldout_path} is not there)" if heldout_path is not None else ""
        report.notes.append(f"chars/token not measured: no tokenizer.data_path file to measure on{where}")
        return report
    start_line, report.heldout_lines = _heldout_start(Path(heldout_path), heldout_lines)
    _measure(loaded, Path(heldout_path), start_line, report)
    if not report.heldout_tokens:
        report.notes.append(f'chars/token not measured: no {{"text": ...}} lines at the end of {heldout_path}')
    return report


def load_tokenizer(directory: str | Path) -> Any:
    """The directory as a fast transformers tokenizer (PreTrainedTokenizerFast), from local files only."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{directory}: not a loadable Hugging Face tokenizer directory ({error})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{directory}: only fast (tokenizers-backed) tokenizers are supported")
    return tokenizer


def tokenizer_vocab_size(directory: str | Path) -> int:
    """len(tokenizer) read from tokenizer.json alone (no transformers import): model vocab plus added tokens."""
    spec = json.loads((Path(directory) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"].get("vocab") or {}
    pieces = {p[0]: i for i, p in enumerate(vocab)} if isinstance(vocab, list) else dict(vocab)  # Unigram: a list
    for added in spec.get("added_tokens", []):
        pieces[added["content"]] = added["id"]
    # max id + 1 guards against holes in the ids: the embedding must cover every id.
    return max(len(pieces), max(pieces.values(), default=-1) + 1)


def tokenizer_fingerprint(directory: str | Path) -> str:
    """Hash of the files that decide tokenization and chat rendering; part of data-cache keys."""
    digest = hashlib.blake2b(digest_size=12)
    for name in _FINGERPRINT_FILES:
        path = Path(directory) / name
        if path.exists():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The conversation as text through the tokenizer's own chat template (tool specs as tools=, as minimind does)."""
    return tokenizer_render(tokenizer)(messages, tools, add_generation_prompt)
