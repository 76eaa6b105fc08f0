"""Fixtures for engine tests: tiny presets that train in seconds (built by tests/support/presets.py), and the
two chat tokenizers, trained once per session and only read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.config import Preset
from tests.engine.chat_fixtures import corpus_texts, make_minimind_style_dir, write_jsonl
from tests.support.presets import preset_factory


@pytest.fixture
def make_preset(corpus: tuple[Path, Path], tmp_path: Path) -> Callable[..., Preset]:
    return preset_factory(corpus, tmp_path)


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in template's tokenizer (byte-level BPE, vocab 400) trained on the chat fixtures' texts."""
    from engine.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("builtin")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": t} for t in corpus_texts()])
    train_tokenizer(corpus, root / "tokenizer", 400, heldout_lines=0)
    return root / "tokenizer"


@pytest.fixture(scope="session")
def minimind_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimind-style model folder: its own tokenizer and <|im_start|> chat template."""
    return make_minimind_style_dir(tmp_path_factory.mktemp("minimind") / "model")
