"""Start-up: the studio must open without paying for torch/transformers (~3 s on these machines)."""

from __future__ import annotations

import json
import subprocess
import sys

from engine.config import PROJECT_ROOT

PROBE = r"""
import asyncio, json, sys, tempfile
from studio.app import StudioApp

async def main():
    app = StudioApp(tempfile.mkdtemp(), offer_tiny=True)
    async with app.run_test(size=(100, 32)) as pilot:
        while len(app.query("Pane")) < 5:   # every lazily mounted tab is up
            await pilot.pause(0.01)
        modal = type(app.screen).__name__
        await pilot.press("escape")          # "not now" to the tiny-preset offer
        for key in "12345":                  # visiting each tab refreshes its lists
            app.action_show_tab({"1": "presets", "2": "runs", "3": "monitor", "4": "data", "5": "chat"}[key])
            await pilot.pause(0.05)
        while not all(w.is_finished for w in app.workers if w.group != "monitor-follow"):
            await pilot.pause(0.02)
    print(json.dumps({"modules": sorted(sys.modules), "modal": modal}))

asyncio.run(main())
"""


def test_startup_imports_no_torch_or_transformers() -> None:
    """Guards against a tab (or a worker started at mount) importing torch/transformers at start-up,
    which would make the studio take seconds to open over SSH. Runs in a fresh interpreter because
    other tests in this process import torch."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    loaded = set(result["modules"])
    assert "torch" not in loaded
    assert "transformers" not in loaded
    assert "textual" in loaded  # the probe really ran the app
    assert result["modal"] == "ConfirmModal", "an empty runs folder should offer to start the tiny preset"
