"""engine.api's own decisions, apart from what it forwards: the estimate both front ends show, the export's
early refusal, which failures the user is told about, and the lazy names of the chat and data modules."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from engine.api import chat, data
from engine.api.errors import user_error
from engine.api.estimate import Target, estimate
from engine.api.export import export
from engine.config import load_preset
from engine.errors import DiskFull, ExportError, PresetError, ResourceError

GiB = 1024**3
ROOMY = Target("cpu", "float32", 64 * GiB, "test CPU", None, 1.0)


def test_one_estimate_for_the_cli_and_the_launch_dialog() -> None:
    """Guards against the two front ends computing the estimate apart again (the CLI's --stage filter, the
    title, the verdict): the launcher forwards to the same function, and the title names the preset's size."""
    from studio import launcher

    preset = load_preset("tiny")
    whole = estimate(preset, ROOMY)
    assert [stage.stage for stage in whole.stages] == [s for s in preset.stages if s != "tokenizer"]
    assert whole.title.startswith(f"{preset.name}: ") and "M parameters" in whole.title and "MFLOP" in whole.title
    assert whole.fits is True and whole.misfits == [] and whole.measured == {}
    assert launcher.estimate(preset, ROOMY) == whole
    only = estimate(preset, ROOMY, stage="sft")
    assert [stage.stage for stage in only.stages] == ["sft"] and only.title == whole.title
    cramped = estimate(preset, Target("cpu", "float32", 1, "no memory"))
    assert cramped.fits is False and cramped.misfits == cramped.stages


def test_calibrating_a_planned_gpu_is_refused_before_any_step() -> None:
    """Guards against --calibrate with --gpu on a machine without CUDA failing deep inside torch (or
    measuring the CPU and calling it the GPU's numbers)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: calibrating one is allowed")
    told: list[str] = []
    with pytest.raises(ResourceError, match="no CUDA GPU"):
        estimate(load_preset("tiny"), Target("cuda", "bfloat16", 8 * GiB, "GPU"), calibrate=True,
                 on_calibrate=lambda stage, steps: told.append(stage))
    assert told == []


def test_export_refuses_a_format_or_dtype_before_reading_anything(tmp_path: Path) -> None:
    """Guards against a typo in --dtype / --format being found only after the checkpoint is looked up
    (a 'no checkpoint found' error that hides the real mistake) or after the output folder exists."""
    with pytest.raises(ExportError, match="does not fit --format hf; choose one of float32, bfloat16, float16"):
        export(tmp_path / "no-such-run", "hf", "q8_0", tmp_path / "out")
    with pytest.raises(ExportError, match="not an export format"):
        export(tmp_path / "no-such-run", "onnx", None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_user_error_tells_the_users_problems_from_bugs() -> None:
    """Guards against the CLI's last except printing a bug as if it were the user's to fix (hiding its
    traceback), or a full disk deep in a library's error chain surfacing as a traceback."""
    refused = PresetError("bad preset")
    assert user_error(refused) is refused
    assert user_error(KeyError("x")) is None
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/some/file")
        except OSError as inner:
            raise RuntimeError("a library's wrapper") from inner
    except RuntimeError as outer:
        assert isinstance(user_error(outer), DiskFull) and "disk full at /tmp/some/file" in str(user_error(outer))


def test_lazy_names_are_the_engines_own_and_unknown_names_fail() -> None:
    """Guards against a lazy re-export handing out a copy (isinstance checks and monkeypatches would miss it)
    or swallowing a typo: an unknown name must be an AttributeError, as on any module."""
    from engine.chat.session import ChatSession
    from engine.data.sample import SampleReport
    from engine.model.generate import Sampling

    assert chat.Sampling is Sampling and chat.ChatSession is ChatSession and data.SampleReport is SampleReport
    with pytest.raises(AttributeError, match="Samplin"):
        _ = chat.Samplin
    with pytest.raises(ImportError):  # what `from` makes of the module's AttributeError
        from engine.api.data import ScanReport  # noqa: F401


def test_scan_and_trained_spans(tmp_path: Path) -> None:
    """Guards against the Data tab's inspection drifting from what a run reads: bad lines with the line
    numbers a run reports, and a pretrain document trained on whole, bos and eos included."""
    path = tmp_path / "pretrain.jsonl"
    path.write_text("\n".join([json.dumps({"text": "one"}), "{broken", json.dumps({"text": "two"})]) + "\n", encoding="utf-8")
    report = data.scan_file(path)
    assert (report.kind, report.records, report.skipped) == ("pretrain", 2, 1)
    assert [line for line, _ in report.bad_lines] == [2] and [line for line, _ in report.records_sample] == [1, 3]
    text, spans = data.trained_spans({"text": "one"}, "pretrain")
    assert text == "<s>one</s>" and spans == [(0, len(text))]
