"""Fixtures every test folder shares; the logic lives in tests/support.

The repository root goes on sys.path first, so tests import `engine`, `studio` and `tests.support`
without installing the package."""

import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from tests.support.corpus import write_corpus  # noqa: E402
from tests.support.presets import train_run  # noqa: E402
from tests.support.runs_cli import kill_engine_processes, stopped_run_template  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def trained_run(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tokenizer -> pretrain -> sft run, trained once per session and shared by the
    read-only tests (chat, export, the CLI views, the studio's chat, data and export tabs)."""
    return train_run(corpus, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def stopped_run(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run stopped after its first step (a 100,000-step pretrain stage), made once per session: the
    concurrency tests resume copies of it (tests.support.runs_cli.copy_run), never the run itself."""
    return stopped_run_template(corpus, tmp_path_factory.mktemp("stopped"))


@pytest.fixture
def live_runs(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/runs, for tests that start real detached runs: whatever still trains there at the end (after
    a test that failed half-way) is killed, instead of going on for its 100,000 steps."""
    path = tmp_path / "runs"
    yield path
    kill_engine_processes(path)
