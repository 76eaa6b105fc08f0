"""Pure helpers behind the studio: bounded series, preset form values, CLI command text."""

from __future__ import annotations

import shlex

from engine.config import PROJECT_ROOT, load_preset, parse_override
from studio.preset_form import (
    cli_command,
    cli_value,
    edited_fields,
    parse_text,
    schema_fields,
    set_value,
)
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
