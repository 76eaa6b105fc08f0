"""Cold start of the studio: a fresh interpreter until the first frame and until every tab is mounted.

    python bench/studio_start.py [--runs N] [--json]

Each run is a new process (nothing cached in sys.modules), headless at 100x32 on an empty runs
folder. Prints the median of N runs; the process also checks that torch/transformers stayed unloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import time
t0 = time.perf_counter()
import asyncio, json, sys
from studio.app import StudioApp
t_import = time.perf_counter() - t0

async def main():
    app = StudioApp(sys.argv[1], offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        t_ready = time.perf_counter() - t0
        while len(app.query("Pane")) < 5:
            await pilot.pause(0.005)
        t_mounted = time.perf_counter() - t0
    print(json.dumps({"import_s": t_import, "first_frame_s": t_ready, "all_tabs_s": t_mounted,
                      "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))

asyncio.run(main())
"""


def one_run() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as runs:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, runs], cwd=ROOT, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall  # interpreter start + the above + shutdown
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [one_run() for _ in range(args.runs)]
    keys = ("import_s", "first_frame_s", "all_tabs_s", "process_wall_s")
    summary = {key: statistics.median(r[key] for r in results) for key in keys}
    summary["heavy_imports"] = any(r["torch"] or r["transformers"] for r in results)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"studio cold start, median of {args.runs} fresh processes:")
        print(f"  import studio.app      {summary['import_s'] * 1000:6.0f} ms")
        print(f"  first frame            {summary['first_frame_s'] * 1000:6.0f} ms")
        print(f"  all five tabs mounted  {summary['all_tabs_s'] * 1000:6.0f} ms")
        print(f"  whole process (wall)   {summary['process_wall_s'] * 1000:6.0f} ms")
        print(f"  torch/transformers imported: {summary['heavy_imports']}")
    return 1 if summary["heavy_imports"] else 0


if __name__ == "__main__":
    sys.exit(main())
