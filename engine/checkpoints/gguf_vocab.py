"""The tokenizer half of a GGUF export: vocabulary, merges, special ids, chat template, and Ollama's Modelfile.

llama.cpp and Ollama re-implement tokenization from what the file says, so a tokenizer is exported only
when the file can say it exactly. A byte-level BPE with no normalizer and a ByteLevel(add_prefix_space=
False, use_regex=True) pre-tokenizer (what this studio trains, and minimind's own tokenizer) is GPT-2's
scheme: `tokenizer.ggml.pre = "gpt-2"` makes llama.cpp split text as transformers does, and
`tokenizer.ggml.pretokenizer` hands Ollama's engine the same regex (without it Ollama assumes Llama 3's
and mis-tokenizes). Any other tokenizer is refused rather than exported to tokenize differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from engine.checkpoints.hf_export import special_token_ids
from engine.data.tokenizer import chat_template_for, load_tokenizer, tokenizer_vocab_size
from engine.errors import ExportError

# The split regex of HF tokenizers' ByteLevel(use_regex=True), which is GPT-2's.
GPT2_SPLIT_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
OLLAMA_PRETOKENIZER_KEY = "tokenizer.ggml.pretokenizer"  # Ollama's key; llama.cpp reads tokenizer.ggml.pre


@dataclass
class GgufVocab:
    """Everything the tokenizer.* keys and the Modelfile need, read once from the tokenizer directory."""

    tokens: list[str]  # one per model id: vocab_size entries, padded past the tokenizer
    types: list[int]  # gguf.TokenType per id
    merges: list[str]  # "left right", in merge-rank order
    ids: dict[str, int]  # "bos" / "eos" / "unk" / "pad" -> id, only those the tokenizer has
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None


def unsupported_reason(spec: dict[str, Any]) -> str | None:
    """Why a tokenizer.json cannot be written as a GPT-2-style GGUF vocabulary, or None when it can."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"a {model.get('type')} model where byte-level BPE is needed"
    if spec.get("normalizer") is not None:
        return f"a {spec['normalizer'].get('type')} normalizer"
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel":
        return f"a {pre.get('type', 'missing')} pre-tokenizer"
    if pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return (f"a ByteLevel pre-tokenizer with add_prefix_space={pre.get('add_prefix_space')}, "
                f"use_regex={pre.get('use_regex', True)}")
    # Options that change how merges apply; llama.cpp's gpt2 vocabulary has none of them.
    for option in ("continuing_subword_prefix", "end_of_word_suffix", "dropout", "ignore_merges"):
        if model.get(option):
            return f"the BPE option {option}={model[option]!r}"
    return None


def _refuse(tokenizer_dir: Path, reason: str) -> ExportError:
    return ExportError(
        f"{tokenizer_dir}: this tokenizer has {reason}, so it cannot be exported to GGUF faithfully. GGUF export "
        "supports byte-level BPE tokenizers only (tokenizer.json with no normalizer and a ByteLevel pre-tokenizer "
        "with add_prefix_space=false and use_regex=true: the ones this studio trains, and minimind's), because only "
        "for those does llama.cpp's \"gpt-2\" pre-tokenizer split text exactly as transformers does; any other would "
        "load and quietly tokenize differently. Export with --format hf instead, or train the tokenizer here."
    )


def read_vocab(tokenizer_dir: Path, vocab_size: int) -> GgufVocab:
    """The tokenizer as GGUF wants it, with ids past the tokenizer up to the model's vocab_size as UNUSED padding."""
    tokenizer_dir = Path(tokenizer_dir)
    spec_path = tokenizer_dir / "tokenizer.json"
    if not spec_path.is_file():
        raise _refuse(tokenizer_dir, "no tokenizer.json")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    reason = unsupported_reason(spec)
    if reason:
        raise _refuse(tokenizer_dir, reason)
    covered = tokenizer_vocab_size(tokenizer_dir)
    if covered > vocab_size:
        raise ExportError(f"{tokenizer_dir}: the tokenizer has {covered} ids but the model only {vocab_size}; "
                          "they do not belong together")
    tokens: list[str | None] = [None] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for piece, index in spec["model"]["vocab"].items():
        tokens[index], types[index] = piece, int(gguf.TokenType.NORMAL)
    for added in spec.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        tokens[added["id"]], types[added["id"]] = added["content"], int(kind)
    # Names must be unique; llama.cpp's own converter pads the same way.
    padded = [token if token is not None else f"[PAD{index}]" for index, token in enumerate(tokens)]
    # tokenizers writes merges as "a b" (older files) or ["a", "b"] (newer ones).
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]

    tok = load_tokenizer(tokenizer_dir)
    special = special_token_ids(tok)
    ids = {"bos": special["bos_token_id"], "eos": special["eos_token_id"], "unk": tok.unk_token_id,
           "pad": special["pad_token_id"]}
    # Whether encoding adds bos/eos lives in the post-processor; ask the tokenizer rather than re-derive it.
    probe = tok("a")["input_ids"]
    return GgufVocab(
        tokens=padded, types=types, merges=merges, ids={k: v for k, v in ids.items() if v is not None},
        add_bos=ids["bos"] is not None and probe[:1] == [ids["bos"]],
        add_eos=ids["eos"] is not None and len(probe) > 1 and probe[-1] == ids["eos"],
        chat_template=tok.chat_template if isinstance(tok.chat_template, str) else None,
        bos_token=tok.bos_token, eos_token=tok.eos_token,
    )


def add_vocab(writer: gguf.GGUFWriter, vocab: GgufVocab) -> None:
    """The tokenizer.* keys."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_string(OLLAMA_PRETOKENIZER_KEY, GPT2_SPLIT_REGEX)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
               "pad": writer.add_pad_token_id}
    for role, token_id in vocab.ids.items():
        setters[role](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def ollama_template(bos: str, eos: str) -> str:
    """Go template rendering what chat_template_for(bos, eos) renders with add_generation_prompt: each message
    (system, user, assistant alike) as `{bos}{role}\\n{content}{eos}\\n`, then `{bos}assistant\\n`. Ollama puts
    a Modelfile SYSTEM or a request's system prompt into .Messages itself."""
    return f"{{{{- range .Messages }}}}{bos}{{{{ .Role }}}}\n{{{{ .Content }}}}{eos}\n{{{{ end }}}}{bos}assistant\n"


def modelfile(gguf_name: str, vocab: GgufVocab, sampling: dict[str, Any]) -> str:
    """Ollama's Modelfile for the exported file (`ollama create NAME -f Modelfile` in its folder)."""
    lines = ["# Ollama: ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}"]
    bos, eos = vocab.bos_token, vocab.eos_token
    if bos and eos and vocab.chat_template == chat_template_for(bos, eos):
        lines.append(f'TEMPLATE """{ollama_template(bos, eos)}"""')
    else:
        # Ollama ignores the Jinja template in the file, and a Go one cannot be derived from arbitrary Jinja.
        lines.append("# No TEMPLATE: this tokenizer's chat template is not the studio's; write its Go equivalent "
                     "here for chat (llama.cpp uses the Jinja template inside the GGUF file).")
    if eos:
        lines.append(f"PARAMETER stop {json.dumps(eos)}")
    for key in ("temperature", "top_p", "top_k"):
        if sampling.get(key):
            lines.append(f"PARAMETER {key} {sampling[key]}")
    return "\n".join(lines) + "\n"
