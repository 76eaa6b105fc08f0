"""The files that make up a tokenizer folder, and copying them: what checkpoints and adoption need
without loading a tokenizer (no `tokenizers` import)."""

from __future__ import annotations

import shutil
from pathlib import Path

# Adopting or copying a tokenizer takes only these (a model folder's weights stay behind).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
)


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files present in `src` into `dst` (created); the names copied."""
    dst.mkdir(parents=True, exist_ok=True)
    present = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in present:
        shutil.copy2(src / name, dst / name)
    return present
