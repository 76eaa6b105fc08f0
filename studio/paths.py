"""How paths are shown: relative to the working directory when inside it, else with ~ for home."""

from __future__ import annotations

from pathlib import Path


def display_path(path: Path | str) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        pass
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)
