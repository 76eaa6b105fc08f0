"""Our multiple-choice scores against the real client: lm-evaluation-harness's `hf` backend on the exported model."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_multiple_choice_agrees_with_lm_eval_on_two_task_formats() -> None:
    """Guards against our reading of lm-eval's tasks drifting from lm-eval itself (a prompt template, the space
    before a choice, how the continuation's tokens are cut from the context's, acc_norm's divisor): on ARC- and
    PIQA-format files scored through lm-eval's own arc_easy and piqa configs, every question picks the same
    choice and every log-likelihood agrees (float32 on the CPU, two implementations of one model)."""
    pytest.importorskip("lm_eval", reason="lm-eval is a dev dependency: pip install -e '.[dev]'")
    from bench.eval_agreement import compare

    table = compare(n=60)
    assert set(table) == {"arc", "piqa"}
    for name, row in table.items():
        assert row["n"] >= 50, name
        assert row["differing"] == 0, (name, row)
        assert row["ours_acc"] == row["theirs_acc"] and row["ours_acc_norm"] == row["theirs_acc_norm"], (name, row)
        assert row["max_ll_diff"] < 1e-3, (name, row)
