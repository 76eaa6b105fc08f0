"""Data: jsonl validation, the token cache, pretrain/SFT blocks with loss masks, splitting and the resumable sampler."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import engine.data.tokenizer as tokenizer_module
from engine.data.blocks import (
    IGNORE_INDEX,
    EpochSampler,
    PretrainBlocks,
    SFTBlocks,
    epoch_permutation,
    pack_sequential,
    split_indices,
)
from engine.data.jsonl import ReadStats, iter_jsonl
from engine.data.token_cache import TokenCache, build_token_cache
from engine.data.tokenizer import load_tokenizer, train_tokenizer
from engine.errors import DataError

WORDS = "the model learns 我们 喜欢 机器 学习 to predict next token 你好 世界 quickly".split()


def text(i: int, n: int = 12) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(n)) + f" {i}"


def write_lines(path: Path, objs: list) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objs), encoding="utf-8")
    return path


def conversation(i: int) -> list[dict]:
    conv = [{"role": "system", "content": "你是助手"}] if i % 3 == 0 else []
    for turn in range(1 + i % 2):
        conv.append({"role": "user", "content": f"question {i}.{turn} {text(i, 3)}"})
        conv.append({"role": "assistant", "content": f"answer {i}.{turn}: {text(i + 1, 2 + i % 5)}"})
    return conv


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = write_lines(root / "c.jsonl", [{"text": text(i)} for i in range(200)])
    train_tokenizer(corpus, root / "tokenizer", 400, heldout_lines=0)
    return root / "tokenizer"


@pytest.fixture(scope="module")
def im_tok_dir(tmp_path_factory):
    """A minimind-style tokenizer whose template uses <|im_start|>/<|im_end|> and ids 0-2 for other tokens."""
    root = tmp_path_factory.mktemp("imtok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text(i) for i in range(200)], trainer=trainer)
    tok.save(str(root / "tokenizer.json"))
    template = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
              "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "chat_template": template}
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture()
def pretrain_file(tmp_path):
    return write_lines(tmp_path / "pretrain.jsonl", [{"text": text(i)} for i in range(60)])


@pytest.fixture()
def sft_file(tmp_path):
    return write_lines(tmp_path / "sft.jsonl", [{"conversations": conversation(i), "tools": []} for i in range(30)])


# --------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize(
    "kind,line,why",
    [
        ("pretrain", '{"text": "ok"', "not valid JSON"),
        ("pretrain", '{"content": "x"}', 'missing key "text"'),
        ("pretrain", '{"text": 3}', '"text" must be a string'),
        ("pretrain", "[1, 2]", "expected a JSON object"),
        ("sft", '{"conversations": []}', "non-empty list"),
        ("sft", '{"conversations": [{"role": "bot", "content": "x"}]}', "role 'bot'"),
        ("sft", '{"conversations": [{"role": "user", "content": null}]}', 'string "content"'),
        ("sft", '{"conversations": [{"role": "user", "content": "only a question"}]}', "no assistant turn"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, kind, line, why):
    """Guards against a bad record failing deep inside training with no hint of where it is."""
    good = {"text": "fine"} if kind == "pretrain" else {"conversations": conversation(1)}
    path = write_lines(tmp_path / "d.jsonl", [good, "", line, good])
    with pytest.raises(DataError) as info:
        list(iter_jsonl(path, kind))
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and why in message and f'{kind}.on_bad_line = "skip"' in message
    stats = ReadStats()
    assert [n for n, _ in iter_jsonl(path, kind, "skip", stats)] == [1, 4]
    assert (stats.lines, stats.records, stats.skipped) == (3, 2, 1) and stats.skipped_examples[0][0] == 3


def test_extra_keys_are_accepted(tmp_path):
    """Guards against minimind's keys (reasoning_content, tools, tool_calls) or unknown ones breaking loading."""
    record = {"conversations": [
        {"role": "system", "content": "s", "tools": [{"name": "f"}]},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "", "reasoning_content": "r", "tool_calls": [{"name": "f"}]},
    ], "id": 7}
    path = write_lines(tmp_path / "d.jsonl", [record, {"text": "t", "source": "web"}])
    assert len(list(iter_jsonl(path, "sft", "skip"))) == 1
    assert len(list(iter_jsonl(path, "pretrain", "skip"))) == 1


# --------------------------------------------------------------------------------------------
# The cache


def test_cache_is_reused_without_tokenizing(tmp_path, tok_dir, pretrain_file, monkeypatch):
    """Guards against re-tokenizing the whole corpus on every run or resume."""
    first = build_token_cache(pretrain_file, tok_dir, "pretrain", tmp_path / "cache")
    assert not first.from_cache

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer was loaded for a cached file")

    monkeypatch.setattr(tokenizer_module, "load_tokenizer", no_tokenizer)
    again = build_token_cache(pretrain_file, tok_dir, "pretrain", tmp_path / "cache")
    assert again.from_cache and again.dir == first.dir
    assert np.array_equal(again.tokens, first.tokens)


def test_cache_invalidated_when_file_changes(tmp_path, tok_dir, pretrain_file):
    """Guards against training on stale tokens after the data file was edited."""
    first = build_token_cache(pretrain_file, tok_dir, "pretrain", tmp_path / "cache")
    with open(pretrain_file, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "one more line"}) + "\n")
    second = build_token_cache(pretrain_file, tok_dir, "pretrain", tmp_path / "cache")
    assert not second.from_cache and second.dir != first.dir and second.n_docs == first.n_docs + 1


def test_interrupted_build_is_rebuilt(tmp_path, tok_dir, pretrain_file):
    """Guards against a half-written cache (no meta.json) being mistaken for a complete one."""
    cache = build_token_cache(pretrain_file, tok_dir, "pretrain", tmp_path / "cache")
    (cache.dir / "meta.json").unlink()
    (cache.dir / "tokens.bin").write_bytes(b"\x00\x01")  # truncated garbage
    dead = tmp_path / "cache" / f".tmp-{cache.dir.name}-999999999"  # a crashed builder's leftovers (no such pid)
    dead.mkdir()
    rebuilt = build_token_cache(pretrain_file, tok_dir, "pretrain", tmp_path / "cache")
    assert not rebuilt.from_cache and rebuilt.n_tokens == cache.n_tokens
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_pretrain_cache_content_and_dtype(tmp_path, tok_dir, pretrain_file):
    """Guards against a wasteful dtype, missing bos/eos, or documents landing at the wrong offsets."""
    cache = build_token_cache(pretrain_file, tok_dir, "pretrain", tmp_path / "cache")
    tok = load_tokenizer(tok_dir)
    assert cache.tokens.dtype == np.uint16 and isinstance(cache.tokens, np.memmap) and cache.mask is None
    assert cache.n_docs == 60 and cache.offsets[0] == 0 and cache.offsets[-1] == cache.n_tokens
    for i in (0, 31, 59):
        ids, mask = cache.doc(i)
        assert ids.tolist() == [1] + tok.encode(text(i)) + [2] and mask is None
    with pytest.raises(ValueError):
        cache.tokens[0] = 5  # read-only map
    assert cache.meta["stats"]["records"] == 60 and cache.meta["dtype"] == "uint16"


def test_cache_pickles_as_a_reference(tmp_path, tok_dir, sft_file):
    """Guards against spawn-started DataLoader workers each receiving a full in-memory copy of the corpus."""
    blocks = SFTBlocks(build_token_cache(sft_file, tok_dir, "sft", tmp_path / "cache"), 32)
    payload = pickle.dumps(blocks)
    assert len(payload) < 20_000
    clone = pickle.loads(payload)
    assert isinstance(clone.cache.tokens, np.memmap)
    assert all(torch.equal(a, b) for a, b in zip(clone[3], blocks[3]))


def test_skip_mode_cache_and_error_mode_reuse(tmp_path, tok_dir):
    """Guards against skipped lines going unreported, and an error-mode run silently reusing a skip-mode cache."""
    path = write_lines(tmp_path / "d.jsonl", [{"text": text(i)} for i in range(5)] + ["{broken"] + [{"text": "end"}])
    with pytest.raises(DataError, match=":6: not valid JSON"):
        build_token_cache(path, tok_dir, "pretrain", tmp_path / "cache")
    # The failed build left nothing behind but its lock's file (a few bytes, reused by the next build of this key).
    assert [p.name[:6] for p in (tmp_path / "cache").iterdir()] == [".lock-"]
    cache = build_token_cache(path, tok_dir, "pretrain", tmp_path / "cache", on_bad_line="skip")
    assert cache.n_docs == 6 and cache.meta["stats"]["skipped"] == 1
    with pytest.raises(DataError, match=":6: not valid JSON"):
        build_token_cache(path, tok_dir, "pretrain", tmp_path / "cache")


# --------------------------------------------------------------------------------------------
# Blocks


def test_pretrain_blocks_shift(tmp_path, tok_dir, pretrain_file):
    """Guards against off-by-one targets and windows that skip or repeat tokens."""
    cache = build_token_cache(pretrain_file, tok_dir, "pretrain", tmp_path / "cache")
    seq_len = 16
    blocks = PretrainBlocks(cache, seq_len)
    assert len(blocks) == (cache.n_tokens - 1) // seq_len
    stream = torch.from_numpy(cache.tokens.astype(np.int64))
    for i in (0, 1, len(blocks) - 1):
        x, y = blocks[i]
        assert x.shape == y.shape == (seq_len,) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x, stream[i * seq_len : (i + 1) * seq_len])
        assert torch.equal(y, stream[i * seq_len + 1 : (i + 1) * seq_len + 1])
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def _check_masks(cache: TokenCache, tok, records: list[dict], eos: str) -> None:
    for i, rec in enumerate(records):
        ids, mask = cache.doc(i)
        assert len(ids) == len(mask)
        expected = "".join(m["content"] + eos for m in rec["conversations"] if m["role"] == "assistant")
        assert tok.decode(ids[mask == 1].tolist(), skip_special_tokens=False) == expected
        assert tok.decode(ids.tolist(), skip_special_tokens=False) == tok.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in rec["conversations"]], tokenize=False)


def test_sft_mask_is_assistant_content_and_eos(tmp_path, tok_dir, sft_file):
    """Guards against training on user/system text or the assistant header, or missing the closing </s>."""
    cache = build_token_cache(sft_file, tok_dir, "sft", tmp_path / "cache")
    records = [json.loads(line) for line in sft_file.read_text(encoding="utf-8").splitlines()]
    _check_masks(cache, load_tokenizer(tok_dir), records, "</s>")
    tok = load_tokenizer(tok_dir)
    ids, mask = cache.doc(1)
    assert tok.decode(ids[-2:].tolist()) == "</s>\n" and mask[-2:].tolist() == [1, 0]  # </s> learned, its newline not
    assert cache.meta["n_loss_tokens"] == int(np.asarray(cache.mask).sum())


def test_sft_mask_with_im_start_tokenizer(tmp_path, im_tok_dir, sft_file):
    """Guards against the mask being hard-wired to our <s>role template (an adopted minimind tokenizer differs)."""
    cache = build_token_cache(sft_file, im_tok_dir, "sft", tmp_path / "cache")
    records = [json.loads(line) for line in sft_file.read_text(encoding="utf-8").splitlines()]
    _check_masks(cache, load_tokenizer(im_tok_dir), records, "<|im_end|>")


def test_pack_sequential_keeps_documents_whole():
    """Guards against the packing plan splitting a conversation across blocks or reordering documents."""
    starts = pack_sequential(np.array([3, 4, 2, 6, 10, 1, 1]), capacity=6)
    # [3] (+4 > 6) | [4, 2] | [6] | [10 -> truncated, alone] | [1, 1]
    assert starts.tolist() == [0, 1, 3, 4, 5, 7]
    assert pack_sequential(np.array([], dtype=np.int64), 6).tolist() == [0]


def test_sft_blocks_pack_and_pad(tmp_path, tok_dir, sft_file):
    """Guards against padding that is trained on, targets not shifted by one, and split conversations."""
    cache = build_token_cache(sft_file, tok_dir, "sft", tmp_path / "cache")
    seq_len = 63
    blocks = SFTBlocks(cache, seq_len)
    lengths = np.diff(cache.offsets)
    assert blocks.n_truncated == int((lengths > seq_len + 1).sum())
    used = 0
    for b in range(len(blocks)):
        x, y = blocks[b]
        assert x.shape == y.shape == (seq_len,) and x.dtype == y.dtype == torch.int64
        docs = range(int(blocks.starts[b]), int(blocks.starts[b + 1]))
        tokens = np.concatenate([cache.doc(d)[0] for d in docs])[: seq_len + 1].astype(np.int64)
        mask = np.concatenate([cache.doc(d)[1] for d in docs])[: seq_len + 1]
        n = len(tokens)
        used += n
        assert torch.equal(x[:n], torch.from_numpy(tokens[:seq_len]))
        assert (x[n:] == 0).all() and (y[n - 1 :] == IGNORE_INDEX).all()
        expected = np.where(mask[1:] == 1, tokens[1:], IGNORE_INDEX)
        assert torch.equal(y[: n - 1], torch.from_numpy(expected))
    assert used == int(np.minimum(lengths, seq_len + 1).sum())
    assert blocks.padding_fraction == pytest.approx(1 - used / (len(blocks) * (seq_len + 1)))
    assert 0 <= blocks.padding_fraction < 1


def test_sft_blocks_truncate_long_conversations(tmp_path, tok_dir, sft_file):
    """Guards against an over-long conversation overflowing its block or being dropped silently."""
    cache = build_token_cache(sft_file, tok_dir, "sft", tmp_path / "cache")
    blocks = SFTBlocks(cache, 8)
    assert blocks.n_truncated == cache.n_docs and len(blocks) == cache.n_docs
    x, y = blocks[0]
    assert x.shape == (8,) and torch.equal(x, torch.from_numpy(cache.doc(0)[0][:8].astype(np.int64)))


# --------------------------------------------------------------------------------------------
# Split and sampler


def test_split_indices_deterministic_and_disjoint():
    """Guards against eval blocks leaking into training, a split that changes between runs, or an empty eval set."""
    train, evals = split_indices(100, 0.1, seed=3)
    again = split_indices(100, 0.1, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(evals, again[1])
    assert len(evals) == 10 and not set(train) & set(evals) and sorted([*train, *evals]) == list(range(100))
    assert len(split_indices(5, 0.01, 0)[1]) == 1
    assert len(split_indices(1, 0.5, 0)[1]) == 0 and len(split_indices(50, 0.0, 0)[1]) == 0


def test_epoch_permutation_depends_on_seed_and_epoch():
    """Guards against every epoch (or every seed) repeating the same order."""
    a = epoch_permutation(50, 1, 0)
    assert torch.equal(a, epoch_permutation(50, 1, 0))
    assert not torch.equal(a, epoch_permutation(50, 1, 1)) and not torch.equal(a, epoch_permutation(50, 2, 0))
    assert sorted(a.tolist()) == list(range(50))


def _take(sampler: EpochSampler, n: int) -> list[list[int]]:
    out: list[list[int]] = []
    while len(out) < n:
        for batch in sampler:
            out.append(batch)
            if len(out) == n:
                break
    return out


def test_sampler_resume_matches_uninterrupted_run():
    """Guards against a resumed run repeating or skipping batches, including across an epoch boundary."""
    indices = np.arange(100, 123)  # 23 items, batch 4 -> 5 batches per epoch, 3 dropped each epoch
    straight = _take(EpochSampler(indices, 4, seed=7), 13)
    first = EpochSampler(indices, 4, seed=7)
    head = _take(first, 3)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = EpochSampler(indices, 4, seed=7)
    resumed.load_state_dict(state)
    assert head + _take(resumed, 10) == straight
    assert all(len(b) == 4 and set(b) <= set(indices.tolist()) for b in straight)
    assert len({i for b in straight[:5] for i in b}) == 20  # no repeats within an epoch


def test_ranks_share_each_global_batch_like_one_bigger_batch():
    """Guards against ranks drawing overlapping or differently ordered data: 2 ranks x batch 3 must see,
    step by step, the halves of what 1 rank x batch 6 sees, and a position saved on 2 ranks must resume on 1
    (and on 2 with accumulation) at the same sequence."""
    indices = np.arange(40)
    one = _take(EpochSampler(indices, 6, seed=3), 12)
    ranks = [_take(EpochSampler(indices, 3, seed=3, rank=r, world=2), 12) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == one
    two = EpochSampler(indices, 3, seed=3, rank=1, world=2)
    _take(two, 2)
    on_one = EpochSampler(indices, 3, seed=3, step_samples=6)  # 1 rank, accumulation 2: same global batch
    on_one.load_state_dict(two.state_dict())
    flat = [i for batch in one[2:4] for i in batch]
    assert [i for batch in _take(on_one, 4) for i in batch] == flat
    with pytest.raises(DataError, match="whole number of global batches"):
        EpochSampler(indices, 4, seed=3).load_state_dict({"epoch": 0, "sample": 6})


def test_sampler_state_at_epoch_end_and_dataloader():
    """Guards against state saved right after an epoch's last batch replaying that epoch, and DataLoader misuse."""
    sampler = EpochSampler(list(range(12)), 3, seed=0)
    assert sampler.batches_per_epoch == 4
    epoch0 = _take(sampler, 4)
    assert sampler.state_dict() == {"epoch": 1, "sample": 0}
    other = EpochSampler(list(range(12)), 3, seed=0)
    other.load_state_dict(sampler.state_dict())
    assert _take(other, 4) != epoch0 and _take(sampler, 4) == _take(EpochSampler(list(range(12)), 3, seed=0), 8)[4:]
    data = torch.arange(12) * 10
    loader = torch.utils.data.DataLoader(data, batch_sampler=EpochSampler(list(range(12)), 3, seed=0))
    batches = [b.tolist() for b in loader]
    assert len(batches) == 4 and sorted(x for b in batches for x in b) == list(range(0, 120, 10))
    with pytest.raises(DataError, match="fewer than one step"):
        EpochSampler([1, 2], 3)
