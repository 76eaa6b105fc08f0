"""Preset schema: shipped presets load, bad input gets one readable paragraph naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import PROJECT_ROOT, load_preset, preset_to_toml
from engine.errors import PresetError

PRESETS = sorted((PROJECT_ROOT / "presets").glob("*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_shipped_presets_validate_and_round_trip(path: Path, tmp_path: Path) -> None:
    """Guards against a shipped preset drifting out of the schema (it would fail only at launch)."""
    preset = load_preset(path)
    again = tmp_path / "again.toml"
    again.write_text(preset_to_toml(preset))
    assert load_preset(again) == preset


def test_required_presets_exist() -> None:
    """Guards against losing one of the presets the README promises."""
    names = {p.stem for p in PRESETS}
    assert {"tiny", "minimind-26m", "minimind-104m", "minimind-moe", "sft-from-pretrain"} <= names


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_error_names_file_field_value_and_fix(tmp_path: Path) -> None:
    """Guards against bare pydantic dumps: the message must name the file, the field path and the fix."""
    path = write(tmp_path, "[pretrain]\nbatch_size = 0\n")
    with pytest.raises(PresetError) as caught:
        load_preset(path)
    message = str(caught.value)
    assert str(path) in message and "pretrain.batch_size" in message and "(got 0)" in message
    assert "greater than or equal to 1" in message and "--set" in message
    assert "\n" not in message


def test_unknown_field_suggests_the_close_name(tmp_path: Path) -> None:
    """Guards against typos being silently ignored (extra='forbid') without a hint."""
    with pytest.raises(PresetError, match=r"unknown field 'pretrain.learning_rat' \(did you mean 'learning_rate'\?\)"):
        load_preset(write(tmp_path, "[pretrain]\nlearning_rat = 1e-3\n"))


def test_cross_field_shape_checks(tmp_path: Path) -> None:
    """Guards against shapes the model cannot build (heads not dividing width, kv heads not dividing heads)."""
    with pytest.raises(PresetError, match="divisible by num_attention_heads"):
        load_preset(write(tmp_path, "[model]\nhidden_size = 100\nnum_attention_heads = 8\n"))
    with pytest.raises(PresetError, match="divisible by num_key_value_heads"):
        load_preset(write(tmp_path, "[model]\nnum_attention_heads = 8\nnum_key_value_heads = 3\n"))


def test_aliases_dim_and_n_layers(tmp_path: Path) -> None:
    """Guards against the tutorial's flag names (dim, n_layers) being rejected."""
    preset = load_preset(write(tmp_path, "[model]\ndim = 256\nn_layers = 3\nnum_attention_heads = 4\n"))
    assert preset.model.hidden_size == 256 and preset.model.num_hidden_layers == 3
    assert preset.model.intermediate_size == 704  # 8/3 * 256 rounded up to a multiple of 64


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    """Guards against --set values staying strings, or bypassing validation."""
    path = write(tmp_path, "")
    preset = load_preset(path, ["pretrain.batch_size=16", "runtime.dtype=float32", "stages=['tokenizer','pretrain']"])
    assert preset.pretrain.batch_size == 16 and preset.runtime.dtype == "float32"
    assert preset.stages == ["tokenizer", "pretrain"]
    with pytest.raises(PresetError, match="pretrain.batch_size"):
        load_preset(path, ["pretrain.batch_size=-1"])
    with pytest.raises(PresetError, match="section.key=value"):
        load_preset(path, ["batch_size"])


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    """Guards against a raw TOMLDecodeError traceback for a typo in the file."""
    with pytest.raises(PresetError, match=r"p.toml: not valid TOML: .*line 2"):
        load_preset(write(tmp_path, "[pretrain]\nbatch_size = = 3\n"))


def test_stage_order_and_tokenizer_source(tmp_path: Path) -> None:
    """Guards against stage lists the pipeline cannot run (wrong order; training with no tokenizer)."""
    with pytest.raises(PresetError, match="in the order"):
        load_preset(write(tmp_path, 'stages = ["sft", "pretrain"]\n'))
    with pytest.raises(PresetError, match="has no tokenizer"):
        load_preset(write(tmp_path, 'stages = ["pretrain"]\n'))
    with pytest.raises(PresetError, match="needs sft.from_weight"):
        load_preset(write(tmp_path, 'stages = ["sft"]\n[tokenizer]\nfrom_dir = "x"\n'))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """Guards against a bare FileNotFoundError traceback."""
    with pytest.raises(PresetError, match="cannot read the preset"):
        load_preset(tmp_path / "nope.toml")


def test_builtin_name_resolves_to_presets_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against `run tiny` or `run presets/tiny.toml` failing outside the repository folder."""
    monkeypatch.chdir(tmp_path)
    assert load_preset("tiny").name == "tiny"
    assert load_preset("presets/tiny.toml").name == "tiny"


def test_a_union_field_is_named_once_with_every_alternative() -> None:
    """Guards the one-paragraph error for fields that take a number or a word (runtime.data_workers): pydantic
    reports each alternative under a made-up path ('data_workers.constrained-int'); the user must see the
    real field once, with what each alternative needs."""
    with pytest.raises(PresetError) as error:
        load_preset("tiny", overrides=["runtime.data_workers=0"])
    text = str(error.value)
    assert "field 'runtime.data_workers' (got 0): Input should be greater than or equal to 1, or input should be 'auto'" in text
    assert "constrained" not in text and text.count("data_workers") == 1
