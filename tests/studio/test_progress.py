"""The end of a foreground run as a log file and an 80-column terminal show it (studio.progress.RunProgress)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from engine.events import CacheProgressEvent, CheckpointEvent, StageEndEvent, StageStartEvent
from studio.progress import RunProgress


def test_a_logged_run_ends_without_a_stale_data_bar_and_its_summary_fits_80_columns(tmp_path: Path) -> None:
    """Guards against two things seen at the end of `run ... > log`: the token cache's progress bar printed again,
    at 0 of 1 MB, after its stage had finished; and the summary table wrapping each checkpoint's absolute path
    into several lines at 80 columns."""
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    run_dir = tmp_path / "a" / "long" / "way" / "down" / "runs" / "20261208-041500-tiny-with-a-long-name"
    checkpoint = run_dir / "checkpoints" / "sft" / "step_000160"
    with RunProgress(console) as progress:
        progress(CacheProgressEvent(stage="sft", bytes_done=0, bytes_total=500_000, mb_per_s=0.5))
        progress(StageStartEvent(stage="sft", total_steps=160, start_step=0, resumed=False, n_docs=10, n_tokens=100,
                                 blocks=5, params=1_000_000, device="cpu", dtype="float32", dtype_reason="asked"))
        progress(CheckpointEvent(stage="sft", step=160, path=str(checkpoint), seconds=0.1))
        progress(StageEndEvent(stage="sft", state="finished", step=160, total_steps=160, loss=1.25, eval_loss=1.5,
                               seconds=42.0))
    logged = out.getvalue()
    assert "sft data" not in logged and "tokenizing" not in logged
    console.print(progress.summary(run_dir.name, "finished", None, run_dir))
    table = out.getvalue()[len(logged):]
    assert "  sft: checkpoints/sft/step_000160" in table.splitlines()
    assert all(len(line) <= 80 for line in table.splitlines())
