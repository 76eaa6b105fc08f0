"""`python tests/support/cache_builder.py PRESET TOKENIZER EVENTS REPORT [STALL_MARKER GO_FILE]`: build (or
reuse) the pretrain token cache of PRESET as a run's pretrain stage does (engine.train.stage_data.make_blocks),
in a process of its own, with its events in EVENTS, and write REPORT (JSON: the cache's folder and meta,
whether it came from the cache).

With STALL_MARKER and GO_FILE, the build stops once its temporary folder holds the whole token file but
before it is published, writes STALL_MARKER (JSON: the temporary folder) and waits there until GO_FILE
exists (or until it is killed).

Why: the build of a test-sized file takes milliseconds, so a second process reaches the cache while the
first is still building it only by luck. Stalling inside the build makes "two builds at once" and
"a builder killed half-way" certain.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(preset: str, tokenizer: str, events: str, report: str, stall_marker: str = "", go_file: str = "") -> int:
    import engine.data.cache_build as cache_build
    from engine.config import load_preset
    from engine.events import EventLog
    from engine.train.stage_data import make_blocks

    if stall_marker:
        real_write_ranges = cache_build.write_ranges

        def stalling_write_ranges(encoder, tmp, *args, **kwargs):
            result = real_write_ranges(encoder, tmp, *args, **kwargs)
            Path(stall_marker).write_text(json.dumps({"tmp": str(tmp)}), encoding="utf-8")
            while not Path(go_file).exists():
                time.sleep(0.01)
            return result

        cache_build.write_ranges = stalling_write_ranges  # read by token_cache at call time

    blocks, info = make_blocks("pretrain", load_preset(preset), Path(tokenizer), EventLog(Path(events)))
    cache = blocks.cache
    Path(report).write_text(json.dumps({"dir": str(cache.dir), "meta": cache.meta, "from_cache": info["from_cache"]}),
                            encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
