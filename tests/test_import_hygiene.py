"""The package boundaries, checked in a fresh interpreter (sys.modules does not lie)."""

from __future__ import annotations

import json
import subprocess
import sys

from engine.config import PROJECT_ROOT


def modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_engine_never_imports_textual_or_studio() -> None:
    """Guards against the engine growing a UI dependency (a detached run must not need the studio)."""
    import pkgutil

    import engine

    # walk_packages, not iter_modules: engine/ is grouped into packages by role, and every module counts.
    names = [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.") if not m.name.endswith("__main__")]
    assert len(names) > 40 and "engine.train.loop" in names and "engine.data.tokenizer" in names
    loaded = modules_after("\n".join(f"import {name}" for name in names))
    assert set(names) <= loaded
    assert not any(m == "textual" or m.startswith("textual.") for m in loaded)
    assert not any(m == "studio" or m.startswith("studio.") for m in loaded)


def test_cli_help_does_not_import_torch() -> None:
    """Guards against `minimind-studio --help` (and studio start-up) paying torch's ~2 s import."""
    loaded = modules_after("from studio import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass")
    assert "torch" not in loaded and "transformers" not in loaded


def test_config_is_light() -> None:
    """Guards against preset validation (used by the studio while typing) importing torch."""
    loaded = modules_after("import engine.config")
    assert "torch" not in loaded


def test_the_engines_front_door_is_light() -> None:
    """Guards against engine.api (what the studio imports at start-up) loading torch, transformers or the UI:
    one eager import of a writer, a session or a trainer in any of its modules would make the studio take
    seconds to open, and one of textual would tie the engine to the UI. Every module of the package counts,
    so a new one is checked without editing this test."""
    import pkgutil

    import engine.api

    names = [m.name for m in pkgutil.walk_packages(engine.api.__path__, "engine.api.")]
    assert {"engine.api.estimate", "engine.api.export", "engine.api.chat", "engine.api.data"} <= set(names)
    loaded = modules_after("\n".join(f"import {name}" for name in ["engine.api", *names]))
    heavy = {m for m in loaded if m.split(".")[0] in ("torch", "transformers", "textual")}
    assert not heavy, sorted(heavy)[:10]
