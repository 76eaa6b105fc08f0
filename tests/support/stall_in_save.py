"""`python tests/support/stall_in_save.py RUN_DIR STALL_AT MARKER`: resume RUN_DIR as a detached run does
(`python -m engine RUN_DIR --resume`), except that the checkpoint write of the first step >= STALL_AT
stops half-way through trainer.safetensors, writes MARKER (JSON: the temporary directory, the step, the
bytes written of the file's size) and waits there to be killed.

Why: a real save of a test-sized model takes milliseconds, so a kill aimed at one lands in it only by
luck. Stalling inside the write makes "killed during a checkpoint write" certain, and leaves on disk
exactly what a kill at that instant of a real write leaves: the `.step_*.tmp-*` directory with
model.safetensors complete and trainer.safetensors cut short."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path


def main(run_dir: str, stall_at: int, marker: Path) -> int:
    from safetensors.torch import save

    import engine.checkpoints.checkpoint as checkpoint
    from engine.__main__ import main as run

    real_save_file = checkpoint.save_file

    def stalling_save_file(tensors, filename, metadata=None):
        path = Path(filename)
        step = int(re.search(r"step_(\d+)", path.parent.name).group(1))
        if path.name != "trainer.safetensors" or step < stall_at:
            return real_save_file(tensors, filename, metadata=metadata)
        data = save(tensors, metadata=metadata)
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
        note = {"tmp": str(path.parent), "step": step, "written": len(data) // 2, "size": len(data), "pid": os.getpid()}
        marker.with_suffix(".part").write_text(json.dumps(note))
        os.replace(marker.with_suffix(".part"), marker)  # the test never reads half a marker
        while True:
            time.sleep(60)  # inside the write until SIGKILL

    checkpoint.save_file = stalling_save_file
    return run([run_dir, "--resume"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
