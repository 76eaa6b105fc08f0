"""The built-in corpus: reproducible, in minimind's formats, and a fair held-out set."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from engine.config import PROJECT_ROOT

DATASET = PROJECT_ROOT / "dataset"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_corpus", DATASET / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATASET / name).read_text(encoding="utf-8").splitlines()]


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    """Guards against hand-edited outputs or a generator that is not deterministic."""
    load_generator().write(tmp_path)
    for name in ("pretrain.jsonl", "sft.jsonl", "heldout.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATASET / name).read_bytes(), name


def test_files_follow_minimind_formats_and_stay_small() -> None:
    """Guards against the built-in data drifting from the formats users' own files have."""
    assert all(set(r) == {"text"} and r["text"] for r in read("pretrain.jsonl"))
    for record in read("sft.jsonl"):
        roles = [m["role"] for m in record["conversations"]]
        assert set(record) == {"conversations"} and "assistant" in roles
        assert set(roles) <= {"system", "user", "assistant"}
    for item in read("heldout.jsonl"):
        assert set(item) == {"id", "kind", "lang", "messages", "answer"} and item["answer"]
    texts = "".join(r["text"] for r in read("pretrain.jsonl"))
    assert any("\u4e00" <= ch <= "\u9fff" for ch in texts) and "lives in" in texts  # both languages
    assert (DATASET / "pretrain.jsonl").stat().st_size < 2_000_000 and (DATASET / "sft.jsonl").stat().st_size < 1_000_000


def test_heldout_questions_never_appear_in_sft_but_their_knowledge_is_in_pretraining() -> None:
    """Guards against a held-out set that leaks into SFT (it would measure memorised chats), or that
    asks about something pretraining never stated (it could not be learned at all)."""
    sft_questions = {m["content"] for r in read("sft.jsonl") for m in r["conversations"] if m["role"] == "user"}
    pretrain = "\n".join(r["text"] for r in read("pretrain.jsonl"))
    items = read("heldout.jsonl")
    assert len(items) >= 100
    for item in items:
        question = item["messages"][-1]["content"]
        assert question not in sft_questions, question
        if item["kind"] != "identity":
            assert question in pretrain and item["answer"] in pretrain, question  # the wording + fact are there
