"""The Data tab: bad lines with their numbers, token statistics, the masked record view, the sampler."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Input, Select

from engine.config import load_preset
from studio.app import StudioApp
from studio.data_scan import MASK_STYLE, render_record
from studio.widgets.data.data_pane import DataPane
from tests.support.wait import ready, until

GOOD = {"conversations": [{"role": "user", "content": "2 plus 2?"}, {"role": "assistant", "content": "4"}]}


def write_sft(path: Path) -> Path:
    lines = [json.dumps(GOOD), "{not json", json.dumps(GOOD), json.dumps({"conversations": [{"role": "user", "content": "hi"}]}),
             "", json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_bad_lines_are_listed_with_their_line_numbers(runs_dir: Path, tmp_path: Path) -> None:
    """Guards against a data check that only says 'invalid file' (or counts blank lines as records),
    leaving the user to hunt for the broken lines a run would refuse."""
    data = write_sft(tmp_path / "sft.jsonl")
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        await pilot.press("4")
        pane = app.query_one(DataPane)
        path_input = pane.query_one("#data-path", Input)
        path_input.value = str(data)
        path_input.focus()
        await pilot.press("enter")
        await until(pilot, lambda: pane.report is not None, what="the scan")
        report = pane.report
        assert (report.kind, report.records, report.lines, report.skipped) == ("sft", 3, 5, 2)
        assert [line for line, _ in report.bad_lines] == [2, 4]
        summary = str(pane.query_one("#data-summary").render())
        assert "line 2: not valid JSON" in summary and "line 4: the conversation has no assistant turn" in summary
        record_text = pane.query_one("#data-record").render()
        assert "assistant" in str(record_text)


async def test_token_lengths_with_a_runs_tokenizer_and_the_sampler(trained_run: Path, tmp_path: Path) -> None:
    """Guards against token statistics that ignore the run's tokenizer/max_seq_len, and a sampler that
    writes nothing (or blocks the UI while it works)."""
    sft_path = Path(load_preset(trained_run / "preset.toml").sft.data_path)
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        await ready(pilot)
        await pilot.press("4")
        pane = app.query_one(DataPane)
        pane.open(sft_path)
        await until(pilot, lambda: pane.report is not None, what="the scan")
        pane.query_one("#data-tokenizer", Select).value = str(trained_run / "tokenizer")
        await until(pilot, lambda: pane.lengths is not None, timeout=30, what="token lengths")
        assert len(pane.lengths.lengths) == pane.report.records and pane.lengths.max_seq_len == 32
        assert 0.0 <= pane.lengths.beyond < 1.0
        assert "beyond max_seq_len 32" in str(pane.query_one("#data-tokens").render())
        out = tmp_path / "small.jsonl"
        pane.query_one("#sample-out", Input).value = str(out)
        pane.query_one("#sample-mb", Input).value = "0.001"
        await pilot.press("ctrl+e")
        await until(pilot, lambda: out.exists(), what="the sample")
        assert 0 < out.stat().st_size <= 1024 * 1.05


def test_record_view_highlights_exactly_the_trained_characters() -> None:
    """Guards against a browser that highlights the prompt (or nothing): only assistant turns and
    their end-of-turn token are trained on."""
    text = render_record(GOOD, "sft")
    trained = "".join(text.plain[span.start:span.end] for span in text.spans if span.style == MASK_STYLE)
    assert trained == "4</s>"
    assert text.plain.startswith("<s>user\n2 plus 2?</s>")
