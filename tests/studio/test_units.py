"""Pure helpers behind the studio: bounded series, preset form values, CLI command text."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

from engine.config import PROJECT_ROOT, load_preset, parse_override
from engine.runs.run_dir import RunSummary
from engine.runs.state import RunState
from studio.preset_form import (
    cli_command,
    cli_value,
    edited_fields,
    parse_text,
    schema_fields,
    set_value,
)
from studio.run_watch import StageView
from studio.series import Ema, Series


def test_series_stays_bounded_and_keeps_means() -> None:
    """Guards against the loss plot growing without bound (a million steps) or drifting when merged."""
    series = Series(cap=100)
    for step in range(10_000):
        series.add(step, float(step))
    xs, ys = series.points()
    assert 50 <= len(xs) <= 100 and series.total == 10_000
    assert all(abs(y - (x + (series.width - 1) / 2)) < 1e-9 for x, y in zip(xs[:-1], ys[:-1]))  # bucket means
    series.add(10_000, float("nan"))  # a NaN loss is skipped, not averaged in
    assert series.total == 10_000
    series.truncate(5_000)
    assert max(series.points()[0]) <= 5_000


def test_ema_is_bias_corrected() -> None:
    """Guards against a smoothed curve that starts near zero (uncorrected EMA) and looks like a spike."""
    ema = Ema(0.9)
    assert ema.update(4.0) == 4.0 and abs(ema.update(4.0) - 4.0) < 1e-12


def test_schema_fields_cover_every_section_with_help() -> None:
    """Guards against fields missing from the generated editor (e.g. a new schema section)."""
    keys = {spec.key: spec for spec in schema_fields()}
    for key in ("name", "stages", "model.hidden_size", "runtime.dtype", "tokenizer.from_dir", "pretrain.batch_size",
                "sft.learning_rate", "tracking.swanlab.mode"):
        assert key in keys and keys[key].description
    assert keys["runtime.dtype"].kind == "choice" and keys["model.use_moe"].kind == "bool"
    assert keys["pretrain.max_steps"].optional and parse_text("", keys["pretrain.max_steps"]) is None
    assert parse_text("3e-3", keys["pretrain.learning_rate"]) == 0.003
    assert parse_text("pretrain, sft", keys["stages"]) == ["pretrain", "sft"]
    assert parse_text("123", keys["name"]) == "123"  # a str field stays text


def test_cli_command_reads_back_as_the_same_preset() -> None:
    """Guards against a shown command that, pasted into a shell, launches something else than the
    studio would (quoting, TOML values, strings that look like numbers)."""
    for value in (["pretrain", "sft"], True, 0.003, 16, "runs", "123", "a b", 'x="y"'):
        assert parse_override(f"k={cli_value(value)}")[1] == value
    base = load_preset("tiny").model_dump(mode="json")
    data = load_preset("tiny").model_dump(mode="json")
    set_value(data, ("pretrain", "batch_size"), 8)
    set_value(data, ("pretrain", "data_path"), "my data/x.jsonl")
    set_value(data, ("name", ), "123")
    command, unexpressible = cli_command(PROJECT_ROOT / "presets" / "tiny.toml", edited_fields(base, data, schema_fields()))
    argv = shlex.split(command)
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert load_preset(PROJECT_ROOT / "presets" / "tiny.toml", overrides).model_dump(mode="json") == data
    assert unexpressible == []


def test_a_run_state_looks_the_same_in_every_view() -> None:
    """Guards against the three views of a run's state disagreeing (a failed run bold red in the monitor
    but plain red in the runs table), and against a crashed stage's bar losing its colour because the
    stage view had no entry for 'crashed'."""
    from rich.progress_bar import ProgressBar

    from studio.display import state_colour, state_style, state_text
    from studio.runs_table import runs_table
    from studio.widgets.monitor.stage_progress import stages_table

    for state in RunState:
        assert state_text(state).plain == state.value and state_style(state).endswith(state_colour(state))
    assert state_style(RunState.CRASHED) == "bold red" and state_colour(RunState.CRASHED) == "red"
    assert state_style("finished") == state_style(RunState.FINISHED) and state_style("from-the-future") == ""

    summary = RunSummary(Path("runs/x"), "tiny", RunState.FAILED, "pretrain", 3, 10, None, None, None, None, None)
    cell = runs_table([summary], now=0).columns[6]._cells[0]
    assert cell.plain == "failed" and cell.style == state_style("failed")

    stage = StageView("pretrain", RunState.RUNNING, 3, 10, None, {})
    snapshot = SimpleNamespace(state=RunState.CRASHED, stage="pretrain", stages=(stage,))
    row = stages_table(snapshot).columns  # the running stage of a crashed run takes the run's state
    bar, tail = row[1]._cells[0], row[3]._cells[0]
    assert isinstance(bar, ProgressBar) and bar.complete_style == "red"
    assert tail.plain == "crashed" and tail.style == "bold red"


def test_a_missing_number_is_one_dash_everywhere() -> None:
    """Guards against "None", "n/a" or an em dash showing for a metric not logged yet, in some views only."""
    from studio.display import MISSING, num, text_or_missing
    from studio.runs_table import human_age, row_cells
    from studio.widgets.monitor.memory_panel import mib

    assert MISSING == "-" and num(None, ".4f") == MISSING and num(1.23456, ".4f") == "1.2346"
    assert text_or_missing(None) == MISSING and text_or_missing("sft") == "sft"
    assert human_age(None) == mib(None) == MISSING
    summary = RunSummary(Path("runs/x"), "tiny", RunState.QUEUED, None, 0, 0, None, None, None, None, None)
    assert row_cells(summary, now=0)[2:6] == (MISSING, "0/0", MISSING, MISSING)


def test_a_reply_of_one_piece_is_not_one_pieces() -> None:
    """Guards against the Chat tab's line under a reply saying "1 pieces"."""
    from studio.display import reply_note

    assert reply_note(1, 0.5, False) == "1 piece · 2.0/s"
    assert reply_note(12, 2.0, True) == "stopped · 12 pieces · 6.0/s"
    assert reply_note(0, 1.0, False) == ""
