"""Export from the Runs tab: the dialog's choices, the export worker, its notification and its errors."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from textual.message import Message
from textual.notifications import Notify
from textual.widgets import Input, Select
from textual.widgets.select import InvalidSelectValueError
from textual.worker import Worker

from studio import exporter
from studio.app import StudioApp
from studio.screens.error_modal import ErrorModal
from studio.screens.export_modal import ExportModal
from studio.widgets.runs.runs_pane import RunsPane
from tests.support.wait import ready, until


def notes(posted: list[Message]) -> list[str]:
    """Notification texts, each once (the hook sees a message at every node it passes)."""
    return list(dict.fromkeys(m.notification.message for m in posted if isinstance(m, Notify)))


async def open_export(pilot, run_dir: Path) -> ExportModal:
    await ready(pilot)
    pilot.app.query_one(RunsPane).select_run(run_dir)
    await pilot.press("x")
    await until(pilot, lambda: isinstance(pilot.app.screen, ExportModal), what="the export dialog")
    await pilot.pause()
    return pilot.app.screen


async def choose(pilot, modal: ExportModal, ident: str, value: str) -> None:
    modal.query_one(f"#{ident}", Select).value = value
    await pilot.pause()


async def wait_for_export(pilot, posted: list[Message]) -> None:
    """Wait on the export worker itself (found in its state messages: a finished worker leaves
    app.workers), then for the message it posted to be handled."""

    def workers() -> list[Worker]:
        return list({id(m.worker): m.worker for m in posted
                     if isinstance(m, Worker.StateChanged) and m.worker.group == "runs-export"}.values())

    await until(pilot, lambda: bool(workers()), what="the export worker")
    await pilot.app.workers.wait_for_complete(workers())
    await until(pilot, lambda: pilot.app.query_one(RunsPane).exporting is None, what="the export's message")


def test_the_dialog_offers_the_engines_dtypes() -> None:
    """Guards against the dialog's dtype menus restating their own list (which drifts from what the writers
    accept) instead of showing the engine's torch-free one, default marked. That list equals the writers'
    type maps: tests/engine/test_export.py."""
    from engine.checkpoints.formats import FORMATS

    for fmt, choice in FORMATS.items():
        options = ExportModal._dtype_options(fmt)
        assert tuple(value for _, value in options) == choice.dtypes
        assert [label for label, _ in options if label.endswith("(default)")] == [f"{choice.default_dtype} (default)"]
    assert FORMATS["hf"].default_dtype == "float32" and FORMATS["gguf"].default_dtype == "f16"


async def test_gguf_q8_0_export_from_the_runs_tab(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Guards against the studio having no way to export, a dtype menu that keeps the other format's
    names after the format changes, a folder that does not follow the format, and a success that
    does not say where the file is and how to run it."""
    monkeypatch.chdir(tmp_path)
    posted: list[Message] = []
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32), message_hook=posted.append) as pilot:
        modal = await open_export(pilot, trained_run)
        assert modal.checkpoint.stage == "sft" and modal.checkpoint.name.startswith("latest")  # the newest, chat-ready
        assert (modal.fmt, modal.dtype) == ("hf", "float32")
        assert modal.query_one("#export-dir", Input).value == f"exports/{trained_run.name}-sft-hf"

        await choose(pilot, modal, "export-format", "gguf")
        assert modal.dtype == "f16"
        with pytest.raises(InvalidSelectValueError):  # the Hugging Face names are gone from the menu
            modal.query_one("#export-dtype", Select).value = "float32"
        assert modal.query_one("#export-dir", Input).value == f"exports/{trained_run.name}-sft-gguf"
        await choose(pilot, modal, "export-dtype", "q8_0")
        await pilot.click("#export")
        await pilot.pause()
        assert not isinstance(app.screen, ExportModal)
        await wait_for_export(pilot, posted)

        out = tmp_path / "exports" / f"{trained_run.name}-sft-gguf"
        assert (out / "model.gguf").is_file() and (out / "Modelfile").is_file()
        [done] = [text for text in notes(posted) if "model.gguf" in text]
        assert f"{trained_run.name} · sft · latest" in done and "(q8_0, " in done
        assert f"llama-cli -m exports/{trained_run.name}-sft-gguf/model.gguf" in done
        assert f"cd exports/{trained_run.name}-sft-gguf && ollama create {trained_run.name}-sft-gguf -f Modelfile" in done
        assert not isinstance(app.screen, ErrorModal)


async def test_cancel_writes_nothing(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Guards against Escape in the export dialog starting an export anyway (or creating the folder)."""
    monkeypatch.chdir(tmp_path)
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        modal = await open_export(pilot, trained_run)
        await choose(pilot, modal, "export-format", "gguf")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ExportModal)
        assert not [w for w in app.workers if w.group == "runs-export"]
        assert app.query_one(RunsPane).exporting is None
    assert not (tmp_path / "exports").exists()


async def test_a_refused_checkpoint_shows_the_engines_paragraph(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Guards against an engine refusal (an MoE checkpoint GGUF cannot hold) crashing the studio, being
    lost in a worker, or leaving the pane believing an export is still under way."""
    runs = tmp_path / "runs"
    moe = runs / trained_run.name
    shutil.copytree(trained_run, moe, symlinks=True)
    for state_file in (moe / "checkpoints" / "sft").glob("step_*/state.json"):
        state = json.loads(state_file.read_text(encoding="utf-8"))
        state["model"]["use_moe"] = True  # what an MoE preset's checkpoint says; refused before weights are read
        state_file.write_text(json.dumps(state), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    posted: list[Message] = []
    app = StudioApp(runs, offer_tiny=False)
    async with app.run_test(size=(100, 32), message_hook=posted.append) as pilot:
        modal = await open_export(pilot, moe)
        await choose(pilot, modal, "export-format", "gguf")
        await pilot.click("#export")
        await wait_for_export(pilot, posted)
        await until(pilot, lambda: isinstance(app.screen, ErrorModal), what="the error modal")
        message = app.screen.message
        assert "mixture-of-experts" in message and "export refuses" in message
        assert "\n" not in message and "Traceback" not in message
        assert app.screen.title_text.startswith(f"export of {moe.name} · sft")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ErrorModal)
    assert not (tmp_path / "exports").exists()


async def test_an_export_under_way_cannot_be_started_twice(runs_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Guards against a second `x` starting another export while one is writing (two workers on one
    folder, or the first one's result lost)."""
    from tests.support.fake_runs import make_run

    run_dir = make_run(runs_dir, "20250101-000000-tiny", stage="sft")
    latest = run_dir / "checkpoints" / "sft" / "step_000004"
    latest.mkdir(parents=True)
    (latest / "state.json").write_text("{}", encoding="utf-8")
    (latest / "model.safetensors").write_bytes(b"")
    release, calls = threading.Event(), []

    def slow_export(request: exporter.ExportRequest) -> exporter.ExportResult:
        calls.append(request)
        assert release.wait(30)
        request.out_dir.mkdir(parents=True)
        return exporter.ExportResult(request, request.out_dir, "0.0 MiB")

    monkeypatch.setattr(exporter, "run", slow_export)
    monkeypatch.chdir(tmp_path)
    posted: list[Message] = []
    app = StudioApp(runs_dir, offer_tiny=False, poll_s=0.05)
    async with app.run_test(size=(100, 32), message_hook=posted.append) as pilot:
        modal = await open_export(pilot, run_dir)
        assert modal.checkpoint.name == "step_000004"
        await pilot.click("#export")
        await until(pilot, lambda: len(calls) == 1, what="the export to start")
        pane = app.query_one(RunsPane)
        assert "exporting to exports/20250101-000000-tiny-sft-hf/" in str(pane.query_one("#runs-hint").render())
        await pilot.press("x")
        await pilot.pause()
        assert not isinstance(app.screen, ExportModal)
        assert any(text.startswith("already exporting") for text in notes(posted))
        release.set()
        await wait_for_export(pilot, posted)
        assert len(calls) == 1
        await pilot.press("x")  # done: the next export may start
        await until(pilot, lambda: isinstance(app.screen, ExportModal), what="the dialog again")


async def test_a_folder_the_user_typed_is_kept(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Guards against a format change overwriting the folder the user typed, and against an empty
    folder dismissing the dialog with an export into the working directory itself."""
    monkeypatch.chdir(tmp_path)
    app = StudioApp(trained_run.parent, offer_tiny=False)
    async with app.run_test(size=(100, 32)) as pilot:
        modal = await open_export(pilot, trained_run)
        folder = modal.query_one("#export-dir", Input)
        folder.value = "mine/out"
        await choose(pilot, modal, "export-format", "gguf")
        assert folder.value == "mine/out"
        folder.value = ""
        await pilot.pause()
        assert "give the folder" in str(modal.query_one("#export-note").render())
        await pilot.click("#export")
        await pilot.pause()
        assert isinstance(app.screen, ExportModal) and app.focused is folder
