"""Start-up: the studio must open without paying for torch/transformers (~3 s on these machines)."""

from __future__ import annotations

import json
import subprocess
import sys

from engine.config import PROJECT_ROOT

PROBE = r"""
import asyncio, json, sys, tempfile
from studio.app import StudioApp
from tests.support.wait import ready, settle

async def main():
    app = StudioApp(tempfile.mkdtemp(), offer_tiny=True)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)                   # every lazily mounted tab is up, its first scans done
        modal = type(app.screen).__name__
        await pilot.press("escape")          # "not now" to the tiny-preset offer
        for tab in ("presets", "runs", "monitor", "data", "chat"):  # visiting each tab refreshes its lists
            app.action_show_tab(tab)
            await pilot.pause(0)             # its messages handled (no wait for idle: a render takes ~0.3 s)
        await settle(pilot)                  # and every worker those visits started has finished
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
