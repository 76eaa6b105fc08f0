"""Stage 1: tokenizer training, the saved HF directory, adoption of an existing (im_start-style) tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.data.tokenizer import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    adopt_tokenizer,
    load_tokenizer,
    render_chat,
    tokenizer_fingerprint,
    tokenizer_vocab_size,
    train_tokenizer,
)
from engine.errors import DataError, PresetError

WORDS_EN = "the model learns to predict the next token from small data quickly".split()
WORDS_ZH = ["我们", "喜欢", "机器", "学习", "模型", "数据", "训练", "你好", "世界"]
IM_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus_lines(n: int, offset: int = 0) -> list[str]:
    lines = []
    for i in range(offset, offset + n):
        en = " ".join(WORDS_EN[(i + k) % len(WORDS_EN)] for k in range(8))
        zh = "".join(WORDS_ZH[(i * 3 + k) % len(WORDS_ZH)] for k in range(6))
        lines.append(f"{en}，{zh}。 line {i}")
    return lines


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def make_im_start_dir(directory: Path, texts: list[str], with_template: bool = True) -> Path:
    """A folder shaped like minimind's newer tokenizer: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False, "model_max_length": 131072,
    }
    if with_template:
        config["chat_template"] = IM_TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "model.safetensors").write_bytes(b"weights that adoption must not copy")
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    data = write_jsonl(root / "corpus.jsonl", corpus_lines(300))
    report = train_tokenizer(data, root / "tokenizer", 400, heldout_lines=20)
    return root / "tokenizer", report, data


def test_special_tokens_have_ids_0_1_2(trained):
    """Guards against the trainer placing special tokens after the alphabet (model code assumes pad/unk=0, bos=1, eos=2)."""
    directory, _, _ = trained
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    hf = load_tokenizer(directory)
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2, 0)


def test_autotokenizer_renders_chat_template(trained):
    """Guards against a tokenizer_config that transformers cannot load offline or a template that renders wrongly."""
    directory, _, _ = trained
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<s>user\nhi</s>\n<s>assistant\n"
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi", "tools": [{"name": "x"}]},
        {"role": "assistant", "content": "hello", "reasoning_content": "think", "tool_calls": []},
    ]
    # Keys the template does not use (tools on a message, empty tool_calls) change nothing; reasoning shows.
    assert render_chat(tok, messages) == (
        "<s>system\nbe brief</s>\n<s>user\nhi</s>\n<s>assistant\n<think>\nthink\n</think>\nhello</s>\n")
    # No bos/eos is silently added around plain text (add_bos_token/add_eos_token false).
    assert tok("hello")["input_ids"] == tok.backend_tokenizer.encode("hello", add_special_tokens=False).ids


def test_round_trip_mixed_text(trained):
    """Guards against lossy decoding (prefix spaces, clean-up of spaces, unknown characters) for zh/en/emoji text."""
    directory, _, _ = trained
    tok = load_tokenizer(directory)
    for text in ["Hello 世界, the model 学习!", "  leading spaces\nand\ttabs  ", "emoji 🙂 and ünïcödé never seen", "<s>user\nhi</s>"]:
        assert tok.decode(tok.encode(text)) == text


def test_heldout_lines_are_not_trained_on(tmp_path):
    """Guards against the held-out lines leaking into training, which would inflate the compression report."""
    heldout = ["qqqjjjxxx " * 30 + str(i) for i in range(5)]
    data = write_jsonl(tmp_path / "c.jsonl", corpus_lines(60) + heldout)
    report = train_tokenizer(data, tmp_path / "tok", 400, heldout_lines=5)
    assert report.train_lines == 60 and report.heldout_lines == 5
    assert report.heldout_chars == sum(len(t) for t in heldout)
    vocab = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json")).get_vocab()
    assert not any("qqq" in piece or "jjj" in piece for piece in vocab)


def test_report_fields_are_sane(trained):
    """Guards against a report the studio cannot show (wrong vocab size, zero division, non-JSON values)."""
    directory, report, _ = trained
    assert report.source == "trained"
    assert report.vocab_size == len(load_tokenizer(directory)) == tokenizer_vocab_size(directory) <= 400
    assert report.train_lines == 280 and report.heldout_lines == 20
    assert report.train_chars > report.heldout_chars > 0 and report.train_seconds >= 0
    assert report.chars_per_token == pytest.approx(report.heldout_chars / report.heldout_tokens, rel=1e-3)
    assert report.chars_per_token > 1.0
    json.dumps(report.to_dict())


def test_small_corpus_keeps_most_lines_for_training(tmp_path):
    """Guards against heldout_lines=200 swallowing a tiny corpus and training on nothing."""
    data = write_jsonl(tmp_path / "c.jsonl", corpus_lines(30))
    report = train_tokenizer(data, tmp_path / "tok", 300)
    assert report.heldout_lines == 3 and report.train_lines == 27


def test_max_train_chars_stops_early(tmp_path):
    """Guards against max_train_chars being ignored (huge corpora would be fed to the trainer whole)."""
    data = write_jsonl(tmp_path / "c.jsonl", corpus_lines(200))
    report = train_tokenizer(data, tmp_path / "tok", 300, heldout_lines=0, max_train_chars=2000)
    assert 2000 <= report.train_chars < 2000 + 200 and report.train_lines < 200


def test_bad_lines_in_corpus(tmp_path):
    """Guards against a malformed corpus line crashing without its line number, or skip mode not counting it."""
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in corpus_lines(20)) + '\n{"txt": 1}\n' + "\n".join(
        json.dumps({"text": t}) for t in corpus_lines(20, 20)) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:21: missing key \"text\""):
        train_tokenizer(path, tmp_path / "tok", 300, heldout_lines=0)
    report = train_tokenizer(path, tmp_path / "tok", 300, heldout_lines=0, on_bad_line="skip")
    assert report.skipped_lines == 1 and report.train_lines == 40


def test_vocab_too_small_is_refused(tmp_path):
    """Guards against silently getting a bigger vocabulary than the model was sized for."""
    with pytest.raises(PresetError, match="vocab_size 100"):
        train_tokenizer(write_jsonl(tmp_path / "c.jsonl", ["x"]), tmp_path / "tok", 100)


def test_retraining_replaces_stale_files(tmp_path):
    """Guards against an old chat_template.jinja (transformers v5 prefers it) shadowing the new config's template."""
    out = tmp_path / "tok"
    out.mkdir()
    (out / "chat_template.jinja").write_text("stale {{ messages }}", encoding="utf-8")
    train_tokenizer(write_jsonl(tmp_path / "c.jsonl", corpus_lines(30)), out, 300)
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert load_tokenizer(out).chat_template == CHAT_TEMPLATE


def test_adopt_im_start_directory(tmp_path):
    """Guards against adoption breaking on a minimind-style tokenizer with its own <|im_start|> template."""
    src = make_im_start_dir(tmp_path / "src", corpus_lines(100))
    heldout = write_jsonl(tmp_path / "h.jsonl", corpus_lines(10, 500))
    report = adopt_tokenizer(src, tmp_path / "tok", heldout_path=heldout, heldout_lines=5)
    assert report.source == "adopted" and report.notes == []
    assert not (tmp_path / "tok" / "model.safetensors").exists()
    tok = load_tokenizer(tmp_path / "tok")
    assert render_chat(tok, [{"role": "user", "content": "hi"}], True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert report.vocab_size == len(tok) == tokenizer_vocab_size(tmp_path / "tok")
    assert report.heldout_lines == 5 and report.heldout_tokens > 0 and report.chars_per_token > 1


def test_adopt_without_template_writes_one(tmp_path):
    """Guards against adopting a tokenizer that cannot render chats (SFT and chat would fail later)."""
    src = make_im_start_dir(tmp_path / "src", corpus_lines(50), with_template=False)
    report = adopt_tokenizer(src, tmp_path / "tok")
    assert report.notes and "chat_template" in report.notes[0]
    tok = load_tokenizer(tmp_path / "tok")
    assert render_chat(tok, [{"role": "user", "content": "hi"}], True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "chat_template" not in json.loads((src / "tokenizer_config.json").read_text())  # source untouched


def test_fingerprint_tracks_tokenizer_files(trained, tmp_path):
    """Guards against a stale data cache being reused after the tokenizer or its template changed."""
    directory, _, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (copy / name).write_bytes((directory / name).read_bytes())
    assert tokenizer_fingerprint(copy) == tokenizer_fingerprint(directory)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["chat_template"] = config["chat_template"].replace("assistant", "bot")
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer_fingerprint(copy) != tokenizer_fingerprint(directory)
