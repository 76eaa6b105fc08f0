"""Fixtures for engine tests: tiny presets that train in seconds (built by tests/support/presets.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.config import Preset
from tests.support.presets import preset_factory


@pytest.fixture
def make_preset(corpus: tuple[Path, Path], tmp_path: Path) -> Callable[..., Preset]:
    return preset_factory(corpus, tmp_path)
