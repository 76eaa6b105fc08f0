"""engine.data.fast_bpe: the token cache's byte-level BPE must give exactly the tokenizer's own ids.

A difference would not fail loudly: the model would train on ids that the tokenizer never produces at chat
time. So every test here compares against `tokenizers` itself, on the text kinds that break shortcuts:
special and added tokens inside text, runs of whitespace of every kind, scripts without spaces, digits of
other scripts, combining marks, emoji, and code points whose Unicode class the two libraries disagree on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers

from engine.data.cache_build import REFERENCE_ENV
from engine.data.fast_bpe import FastByteLevelBPE, class_corrections, split_patterns
from engine.data.token_cache import build_token_cache
from engine.data.tokenizer import load_tokenizer
from tests.engine.chat_fixtures import MARKUP, RECORDS, SPECIALS, corpus_texts, write_jsonl

CASES = 300
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _letters_unknown_to_tokenizers(count: int = 3) -> list[str]:
    """Code points `regex` calls letters and tokenizers' pre-tokenizer does not (thousands, with today's versions)."""
    import regex
    from tokenizers.pre_tokenizers import ByteLevel

    pre, letter = ByteLevel(add_prefix_space=False, use_regex=True), regex.compile(r"\p{L}")
    found = []
    for c in range(0x250, sys.maxunicode + 1):
        if not 0xD800 <= c <= 0xDFFF and letter.match(chr(c)) and len(pre.pre_tokenize_str("a" + chr(c))) == 2:
            found.append(chr(c))
            if len(found) == count:
                break
    return found


PIECES = [
    "a", "Z", "word", "é", "ß", "İ", "1", "42", "٣", "½", "Ⅻ", "²", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n",
    "\xa0", "\u3000", "\u2028", "\x85", "\x0b", "\x0c", "\x1f", "\x00", "你", "好", "中文句子", "。", "，", "？", "！",
    "🙂", "👍🏽", "e\u0301", "\u200d", "\ufeff", "'s", "'ll", "'", "-", "$", "...", "<", ">", "|", "_",
    *SPECIALS, *MARKUP, "<s>", "</s>", "<unk>", "<|im_", "_start|>", "<tool", "<tool>", "<tool_call>",
]
PREFIX_CHAIN = ["<tool", "<tool>", "<tool_call>"]  # added tokens that begin with one another
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


def _reference(tokenizer, items: list[str]) -> list[list[int]]:
    return [enc.ids for enc in tokenizer.backend_tokenizer.encode_batch(items, add_special_tokens=False)]


def _token_bytes(tokenizer, token_id: int) -> int:
    added = {t.content: i for i, t in tokenizer.backend_tokenizer.get_added_tokens_decoder().items()}
    by_id = {i: len(c.encode("utf-8")) for c, i in added.items()}
    return by_id.get(token_id) or len(tokenizer.backend_tokenizer.id_to_token(token_id))


def _dense_tokenizer_dir(directory: Path) -> Path:
    """A byte-level BPE trained on the generated pieces themselves, so that it has merges for whitespace runs
    ("\\n  ", "\\u3000 ") and mixed scripts: cutting a document where tokenizers does not cut it then changes
    the ids (with the chat fixtures' small vocabularies such cuts can go unseen), plus added tokens that are
    prefixes of one another."""
    import random

    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, show_progress=False, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["".join(rng.choices(PIECES, k=30)) for _ in range(4000)], trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in PREFIX_CHAIN])
    directory.mkdir(parents=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def tokenizers_pair(builtin_dir: Path, minimind_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    dense = _dense_tokenizer_dir(tmp_path_factory.mktemp("dense") / "tokenizer")
    return {"builtin": load_tokenizer(builtin_dir), "minimind": load_tokenizer(minimind_dir), "dense": load_tokenizer(dense)}


@pytest.mark.parametrize("which", ["builtin", "minimind", "dense"])
def test_ids_and_lengths_equal_the_tokenizer_on_corpus_and_chat_text(tokenizers_pair, which) -> None:
    """Guards against the segment and word caches giving other ids than the tokenizer on real text: the
    chat fixtures' corpus, every record rendered by the chat template (special tokens, tool markup, JSON),
    and the same texts again so that the second pass comes from the caches."""
    tok = tokenizers_pair[which]
    rendered = []
    for record in RECORDS:
        try:
            rendered.append(tok.apply_chat_template(record["conversations"], tokenize=False))
        except Exception:  # noqa: BLE001 - a record the template refuses is not this test's business
            continue
    items = corpus_texts()[:300] + rendered
    fast = FastByteLevelBPE.for_tokenizer(tok, 2, lengths=True)
    assert fast is not None, f"the {which} tokenizer should take the fast path"
    want = _reference(tok, items)
    for _ in range(2):
        got = fast.encode_with_lengths(items)
        assert [list(array("H", ids)) for ids, _ in got] == want
        for text, (ids, lengths) in zip(items, got):
            assert list(array("I", lengths)) == [_token_bytes(tok, i) for i in array("H", ids)]
            assert sum(array("I", lengths)) == len(text.encode("utf-8"))


@FUZZ
@given(items=st.lists(texts, min_size=1, max_size=6), which=st.sampled_from(["builtin", "minimind", "dense"]))
def test_generated_text_encodes_as_the_tokenizer_does(tokenizers_pair, items: list[str], which: str) -> None:
    """Guards against a segment boundary that is no pre-token boundary (two spaces, a newline or a no-break
    space before a space), an added token matched differently (longest first, fragments of one), or a
    script, digit or mark classified differently; with tiny caches so that they are cleared mid-batch."""
    tok = tokenizers_pair[which]
    fast = FastByteLevelBPE.for_tokenizer(tok, 2)
    assert fast is not None
    fast.max_entries = 3
    got = [list(array("H", ids)) for ids in fast.encode(items + items)]
    assert got == _reference(tok, items + items)


def test_code_points_the_libraries_classify_differently_are_split_as_tokenizers_does(tokenizers_pair) -> None:
    """Guards against the Unicode-version gap: `regex` knows letters that tokenizers' Oniguruma calls
    unassigned. Text made of such a code point must still encode to the tokenizer's ids."""
    odd = _letters_unknown_to_tokenizers()
    assert odd, "no such code point with these library versions: this test proves nothing"
    tok = tokenizers_pair["builtin"]
    items = [f"a{c}b  {c}{c} x{c}1 {c} word {c}word 12{c}34" for c in odd]
    fast = FastByteLevelBPE.for_tokenizer(tok, 2)
    assert fast is not None
    assert [list(array("H", ids)) for ids in fast.encode(items)] == _reference(tok, items)


@pytest.mark.slow
def test_the_split_pattern_matches_the_pre_tokenizer_on_every_code_point() -> None:
    """Guards against a class correction computed wrong: every code point, between a letter and a digit,
    between dots, between spaces and doubled before a letter, is cut exactly where the tokenizers
    pre-tokenizer cuts it."""
    import regex
    from tokenizers.pre_tokenizers import ByteLevel

    pattern = regex.compile(split_patterns()[0])
    pre = ByteLevel(add_prefix_space=False, use_regex=True)
    code_points = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    for template in ("a{c}1", ".{c}.", " {c} ", "{c}{c}a "):
        text = "".join(template.format(c=c) for c in code_points)
        assert [m.span() for m in pattern.finditer(text)] == [span for _, span in pre.pre_tokenize_str(text)], template
    fixes = class_corrections()
    assert fixes["L"]["out"], "expected some letters unknown to tokenizers' Unicode tables (else this test proves less)"


def test_other_tokenizer_shapes_are_left_to_the_tokenizer(tmp_path: Path) -> None:
    """Guards against the fast path taking a tokenizer whose pipeline it does not reproduce (a normalizer,
    another pre-tokenizer, added tokens that strip spaces): those must use the tokenizer's own encode."""
    def trained(normalizer=None, pre=None, added=None) -> Tokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre or pre_tokenizers.ByteLevel(add_prefix_space=False)
        if normalizer:
            tok.normalizer = normalizer
        trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus_texts()[:50], trainer=trainer)
        if added:
            tok.add_special_tokens([added])
        return tok

    assert FastByteLevelBPE.for_tokenizer(trained(), 2) is not None
    assert FastByteLevelBPE.for_tokenizer(trained(normalizer=normalizers.NFKC()), 2) is None
    assert FastByteLevelBPE.for_tokenizer(trained(pre=pre_tokenizers.Whitespace()), 2) is None
    assert FastByteLevelBPE.for_tokenizer(trained(pre=pre_tokenizers.ByteLevel(add_prefix_space=True)), 2) is None
    assert FastByteLevelBPE.for_tokenizer(trained(added=AddedToken("<x>", lstrip=True)), 2) is None


def _build(tmp: Path, data: Path, tok_dir: Path, kind: str, reference: bool) -> dict[str, bytes]:
    """A cache built in a fresh process, the fast path on or off: its data files."""
    code = (f"import os; os.environ[{REFERENCE_ENV!r}] = {'1' if reference else '0'!r}\n"
            "from engine.data.token_cache import build_token_cache\n"
            f"c = build_token_cache({str(data)!r}, {str(tok_dir)!r}, {kind!r}, {str(tmp)!r}, on_bad_line='skip', workers=1)\n"
            "print(c.dir)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    folder = Path(done.stdout.strip().splitlines()[-1])
    return {name: (folder / name).read_bytes() for name in ("tokens.bin", "mask.bin", "offsets.npy")
            if (folder / name).exists()}


@pytest.mark.parametrize("which", ["builtin", "minimind"])
def test_token_cache_is_the_same_bytes_with_and_without_the_fast_path(tmp_path: Path, builtin_dir: Path,
                                                                       minimind_dir: Path, which: str) -> None:
    """Guards against the SFT loss mask moving when it is computed from UTF-8 byte lengths instead of the
    tokenizer's character offsets (tokens that split a Chinese character or an emoji, spans at special
    tokens), and against pretraining ids or document boundaries changing: both caches, every message kind
    of the chat fixtures, must be byte-identical to the tokenizer's own path."""
    tok_dir = {"builtin": builtin_dir, "minimind": minimind_dir}[which]
    sft = write_jsonl(tmp_path / "sft.jsonl", RECORDS * 3)
    pretrain = write_jsonl(tmp_path / "pretrain.jsonl",
                           [{"text": t} for t in corpus_texts()[:400]] + [{"text": "e\u0301 🙂👍🏽 你好  x\n y" + "".join(SPECIALS)}])
    for data, kind in ((sft, "sft"), (pretrain, "pretrain")):
        fast = _build(tmp_path / f"fast-{kind}", data, tok_dir, kind, reference=False)
        slow = _build(tmp_path / f"slow-{kind}", data, tok_dir, kind, reference=True)
        assert fast == slow, kind
        if kind == "sft":
            assert any(fast["mask.bin"]), "no token was learned: the comparison proves nothing"


def test_a_lone_surrogate_is_a_bad_line_not_a_crash(tmp_path: Path, builtin_dir: Path) -> None:
    """Guards against a JSON \\ud800 escape (valid JSON, not a character) reaching the tokenizer, which
    raises a bare TypeError mid-build; it is a located bad line, skipped when the preset says so."""
    data = tmp_path / "p.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "bad \\ud800 here"}\n{"text": "pair \\ud83d\\ude00 ok"}\n', encoding="utf-8")
    cache = build_token_cache(data, builtin_dir, "pretrain", tmp_path / "cache", on_bad_line="skip")
    assert cache.n_docs == 2
    assert cache.meta["stats"]["skipped_examples"][0][0] == 2
    assert "surrogate" in cache.meta["stats"]["skipped_examples"][0][1]
    json.dumps(cache.meta)  # the reason is plain text


def test_caches_stay_bounded_on_text_that_never_repeats(tokenizers_pair) -> None:
    """Guards against memory growing with the file: documents without spaces (a Chinese corpus) are one
    segment each and never recur; they must not all be kept (as the first segment's cache once did), and no
    key may be longer than LONGEST_KEY."""
    import random

    from engine.data import fast_bpe

    rng = random.Random(0)
    tok = tokenizers_pair["dense"]
    fast = FastByteLevelBPE.for_tokenizer(tok, 2, max_entries=50)
    assert fast is not None
    caches = (fast.first, fast.spaced, fast.words, fast.pieces)
    for _ in range(40):
        # Few distinct words (so the word cache stays small and never triggers a clear), each document new.
        batch = ["。".join(rng.choices(["你好", "中文", "句子", "天气", "1", "a"], k=rng.randint(2, 120))) for _ in range(10)]
        assert [list(array("H", ids)) for ids in fast.encode(batch)] == _reference(tok, batch)
        assert all(len(key) <= fast_bpe.LONGEST_KEY for cache in caches for key in cache)
        assert max(map(len, caches)) <= 50 + 10 * 200, "a cache outgrew its bound by more than one batch adds"
    assert len(fast.first) <= 50 + 10
