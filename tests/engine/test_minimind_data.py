"""minimind's data as published today, end to end: tool and reasoning conversations train with the built-in
tokenizer and with an adopted minimind-style one; adopting needs only the tokenizer folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.data.token_cache import build_token_cache
from engine.data.tokenizer import adopt_tokenizer, load_tokenizer
from engine.errors import PresetError
from engine.events import iter_events
from engine.runs.pipeline import preflight, run_pipeline
from engine.runs.run_dir import create_run
from tests.engine.chat_fixtures import RECORDS, make_minimind_style_dir, write_jsonl
from tests.support.presets import preset_factory


def _train(corpus, root: Path, sft_path: Path, **sections):
    make = preset_factory(corpus, root)
    sft = {"data_path": str(sft_path), "max_seq_len": 1024, "batch_size": 2, "max_steps": 3, "eval_fraction": 0.1}
    preset = make(sft=sft, **sections)
    preflight(preset, "test.toml")
    run_dir = create_run(preset)
    result = run_pipeline(run_dir)
    return preset, run_dir, result


def _check_sft_learned_tool_turns(preset, run_dir: Path, result) -> None:
    assert result.state == "finished"
    losses = [e.loss for e in iter_events(run_dir / "events.jsonl") if e.kind == "step" and e.stage == "sft"]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)
    cache = build_token_cache(preset.sft.data_path, run_dir / "tokenizer", "sft", preset.runtime.cache_dir)
    assert cache.from_cache and cache.n_docs == len(RECORDS) * 6 and not cache.meta["stats"]["skipped"]
    tok = load_tokenizer(run_dir / "tokenizer")
    ids, mask = cache.doc(3)  # the weather call: its tool call is among what the model learned
    learned = tok.decode(np.asarray(ids)[np.asarray(mask) == 1].tolist(), skip_special_tokens=False)
    assert '"name": "get_weather"' in learned and "查询城市天气" not in learned


def test_tool_conversations_train_with_the_builtin_tokenizer(corpus, tmp_path) -> None:
    """Guards against tool / reasoning lines being rejected as bad lines (the default on_bad_line = "error"
    stopped the run at the first one) or kept with their calls thrown away."""
    preset, run_dir, result = _train(corpus, tmp_path, _write(tmp_path))
    _check_sft_learned_tool_turns(preset, run_dir, result)


def test_tool_conversations_train_with_an_adopted_minimind_tokenizer(corpus, tmp_path) -> None:
    """Guards against adopting minimind's tokenizer requiring a held-out data file (the run died with a raw
    '[Errno 2] No such file or directory' when tokenizer.data_path was absent), and against its template's
    tool and think blocks failing in the SFT cache."""
    model_dir = make_minimind_style_dir(tmp_path / "minimind" / "model")
    missing = tmp_path / "not-downloaded" / "pretrain_hq.jsonl"
    preset, run_dir, result = _train(corpus, tmp_path, _write(tmp_path), model={"vocab_size": 416},
                                     tokenizer={"from_dir": str(model_dir), "data_path": str(missing)})
    _check_sft_learned_tool_turns(preset, run_dir, result)
    end = next(e for e in iter_events(run_dir / "events.jsonl") if e.kind == "stage_end" and e.stage == "tokenizer")
    assert end.source == "adopted" and end.chars_per_token == 0
    assert any("chars/token not measured" in note and str(missing) in note for note in end.notes)


def test_adoption_measures_chars_per_token_when_the_file_is_there(tmp_path) -> None:
    """Guards against skipping the compression figure when a data file is there to measure it on."""
    model_dir = make_minimind_style_dir(tmp_path / "model")
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"北京今天晴 the weather in Paris {i}"} for i in range(30)])
    report = adopt_tokenizer(model_dir, tmp_path / "tok", heldout_path=texts, heldout_lines=10)
    assert report.heldout_lines == 10 and report.chars_per_token > 1 and report.notes == []


def test_preflight_names_every_path_a_stage_opens(make_preset, tmp_path) -> None:
    """Guards against a launch that dies mid-run on a path preflight never looked at, or an error that
    does not say which preset field holds it."""
    with pytest.raises(PresetError, match=r"tokenizer\.data_path = '/nope\.jsonl': file not found"):
        preflight(make_preset(tokenizer={"data_path": "/nope.jsonl"}), "x.toml")
    with pytest.raises(PresetError, match=r"tokenizer\.from_dir = '.*absent': folder not found"):
        preflight(make_preset(tokenizer={"from_dir": str(tmp_path / "absent")}), "x.toml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PresetError, match=r"tokenizer\.from_dir = '.*empty': no tokenizer files there"):
        preflight(make_preset(tokenizer={"from_dir": str(tmp_path / "empty")}), "x.toml")
    with pytest.raises(PresetError, match=r"sft\.heldout_path = '/nope\.jsonl': file not found"):
        preflight(make_preset(sft={"heldout_path": "/nope.jsonl"}), "x.toml")
    model_dir = make_minimind_style_dir(tmp_path / "model")
    # Adopting reads only the folder: an absent tokenizer.data_path is not an error.
    preflight(make_preset(tokenizer={"from_dir": str(model_dir), "data_path": "/nope.jsonl"}), "x.toml")


def _write(root: Path) -> Path:
    return write_jsonl(root / "sft_tools.jsonl", RECORDS * 6)
