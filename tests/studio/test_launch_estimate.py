"""The launch dialog: the pre-flight estimate is shown before a run is created, and a preset that does
not fit needs an explicit "Launch anyway"."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.widgets import Button, Select, Static

from engine.config import Preset
from engine.hardware.estimate import GiB, Target
from studio import launcher
from studio.app import StudioApp
from studio.screens.launch_modal import ESTIMATING, LaunchModal
from studio.widgets.presets.preset_editor import PresetEditor
from studio.widgets.presets.presets_pane import PresetsPane
from tests.support.fake_runs import make_run
from tests.support.wait import ready, until

ROOMY = Target("cpu", "float32", 64 * GiB, "test CPU", None, 1.0)  # tiny fits with room to spare
CRAMPED = Target("cpu", "float32", 2 * GiB, "test CPU", None, 1.0)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, runs_dir: Path) -> dict[str, list]:
    """Record what reaches the launcher; launch() writes a fake run directory instead of starting one."""
    seen: dict[str, list] = {"check": [], "launch": [], "detect": []}

    def launch(preset: Preset) -> Path:
        seen["launch"].append(preset)
        return make_run(runs_dir, f"20250101-00000{len(seen['launch'])}-{preset.name}", state="queued")

    monkeypatch.setattr(launcher, "check", lambda preset, source: seen["check"].append(preset))
    monkeypatch.setattr(launcher, "launch", launch)
    return seen


def fake_target(monkeypatch: pytest.MonkeyPatch, calls: dict[str, list], target: Target,
                gate: threading.Event | None = None) -> None:
    """Answer detect_target with `target` (after `gate` opens, if given) instead of asking this machine."""

    def detect(preset: Preset) -> Target:
        calls["detect"].append(preset)
        if gate is not None:
            gate.wait(10)
        return target

    monkeypatch.setattr(launcher, "detect_target", detect)


async def open_dialog(pilot) -> tuple[PresetsPane, LaunchModal]:
    """Presets tab, the tiny preset selected, ctrl+r: the launch dialog."""
    await ready(pilot)
    await pilot.press("1")
    pane = pilot.app.query_one(PresetsPane)
    assert pane.path is not None and pane.path.stem == "tiny"
    await pilot.press("ctrl+r")
    await until(pilot, lambda: isinstance(pilot.app.screen, LaunchModal), what="the launch dialog")
    return pane, pilot.app.screen  # type: ignore[return-value]


async def estimated(pilot, modal: LaunchModal, timeout: float = 10.0) -> None:
    await until(pilot, lambda: modal.result is not None or modal.error is not None, timeout=timeout, what="the estimate")
    await pilot.pause()


def text(modal: LaunchModal, selector: str) -> str:
    return str(modal.query_one(selector, Static).render())


async def test_estimate_is_shown_before_the_run_is_created_then_launch_starts_it(runs_dir: Path, calls, monkeypatch) -> None:
    """Guards against a launch that creates the run before the user has seen whether it fits, a Launch
    button usable while the estimate is still coming, and a confirmed launch that goes nowhere."""
    gate = threading.Event()
    fake_target(monkeypatch, calls, ROOMY, gate)
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(120, 40)) as pilot:
        _, modal = await open_dialog(pilot)
        await pilot.pause()
        assert text(modal, "#launch-verdict") == ESTIMATING
        assert modal.query_one("#go", Button).disabled  # nothing to decide on yet
        gate.set()
        await estimated(pilot, modal)
        verdict = text(modal, "#launch-verdict")
        assert verdict.startswith("✓ Fits in test CPU, float32, 64.00 GiB available RAM: needs about")
        assert "peak (estimated)" in modal.plain and "pretrain: micro-batch 16 x 256 tokens" in modal.plain
        assert "sft: micro-batch 16 x 256 tokens" in modal.plain
        assert calls["launch"] == [] and calls["check"] == [] and list(runs_dir.iterdir()) == []
        go = modal.query_one("#go", Button)
        assert str(go.label) == "Launch" and not go.disabled and app.focused is go
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one("#tabs").active == "monitor", what="the monitor")
        (launched,) = calls["launch"]
        assert launched.name == "tiny" and Path(launched.out_dir) == runs_dir.resolve()
        assert len(calls["check"]) == 1 and len(calls["detect"]) == 1


async def test_cancel_creates_no_run_and_the_real_device_is_detected_once(runs_dir: Path, calls, monkeypatch,
                                                                         tmp_path: Path) -> None:
    """Guards against Cancel still launching, the real device detection (engine.train.calibrate, torch) failing
    inside the studio's worker, and detecting the device again (seconds) on every launch."""
    cwd = tmp_path / "cwd"  # the CPU's measured peak is cached under runtime.cache_dir (runs/.cache), not here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(120, 40)) as pilot:
        pane, modal = await open_dialog(pilot)
        await estimated(pilot, modal, timeout=30)  # first use: imports torch, measures the CPU's matmul peak
        assert modal.error is None and modal.result is not None
        assert modal.result.target.device == "cpu" and modal.result.fits  # ~0.5 GiB on any machine that runs tests
        assert text(modal, "#launch-verdict").startswith("✓ Fits in CPU") and "peak (estimated)" in modal.plain
        await pilot.click("#cancel")
        await until(pilot, lambda: not isinstance(app.screen, LaunchModal), what="the dialog to close")
        await pilot.pause()
        assert calls["launch"] == [] and calls["check"] == [] and list(runs_dir.iterdir()) == []
        assert app.query_one("#tabs").active == "presets" and not pane.launching
        assert list(pane.targets) == [("auto", "auto")]

        def detect_again(preset: Preset) -> Target:
            raise AssertionError("the device was detected a second time")

        monkeypatch.setattr(launcher, "detect_target", detect_again)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, LaunchModal), what="the launch dialog again")
        again: LaunchModal = app.screen  # type: ignore[assignment]
        await estimated(pilot, again)
        assert again.error is None and again.result.target == modal.result.target
        await pilot.press("escape")
        await pilot.pause()
        assert list(runs_dir.iterdir()) == []


async def test_a_preset_that_does_not_fit_needs_launch_anyway(runs_dir: Path, calls, monkeypatch) -> None:
    """Guards against a misfit shown as quietly as a fit, its advice left out, Enter launching it
    straight away, and the user being unable to launch it when they know better."""
    fake_target(monkeypatch, calls, CRAMPED)
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("1")
        await app.query_one(PresetEditor).set_field("pretrain.batch_size", "4096")
        await pilot.pause()
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, LaunchModal), what="the launch dialog")
        modal: LaunchModal = app.screen  # type: ignore[assignment]
        await estimated(pilot, modal)
        verdict = modal.query_one("#launch-verdict", Static)
        assert str(verdict.render()).startswith("✗ Does not fit in test CPU, float32, 2.00 GiB available RAM: "
                                                "pretrain needs about")
        assert "sft" not in str(verdict.render())  # sft keeps its batch of 16, which fits
        assert verdict.has_class("misfit") and modal.query_one("#dialog").has_class("danger")
        advice = modal.query_one("#launch-advice", Static)
        assert advice.display and "lower pretrain.batch_size to" in str(advice.render())
        go = modal.query_one("#go", Button)
        assert str(go.label) == "Launch anyway" and go.variant == "error"
        assert app.focused is modal.query_one("#cancel", Button)
        await pilot.press("enter")  # lands on Cancel: a stray Enter starts nothing
        await pilot.pause()
        assert calls["launch"] == [] and not isinstance(app.screen, LaunchModal)

        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, LaunchModal), what="the launch dialog again")
        await estimated(pilot, app.screen)  # type: ignore[arg-type]
        await pilot.click("#go")
        await until(pilot, lambda: app.query_one("#tabs").active == "monitor", what="the monitor")
        (launched,) = calls["launch"]
        assert launched.pretrain.batch_size == 4096


async def test_an_estimate_error_is_one_paragraph_and_launch_stays_possible(runs_dir: Path, calls) -> None:
    """Guards against a device error (float16 training on a CPU) surfacing as a traceback or crashing
    the studio, instead of the engine's one-paragraph advice."""
    app = StudioApp(runs_dir, offer_tiny=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("1")
        editor = app.query_one(PresetEditor)
        await editor.set_field("runtime.device", "cpu")
        await editor.sections["runtime"].open()
        dtype = editor.rows["runtime.dtype"].input
        assert isinstance(dtype, Select)
        dtype.value = "float16"
        await pilot.pause()
        assert (editor.data["runtime"]["device"], editor.data["runtime"]["dtype"]) == ("cpu", "float16")
        assert app.query_one(PresetsPane).error is None  # valid as a preset; only this machine refuses it
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, LaunchModal), what="the launch dialog")
        modal: LaunchModal = app.screen  # type: ignore[assignment]
        await estimated(pilot, modal, timeout=30)
        verdict = text(modal, "#launch-verdict")
        assert verdict.startswith("Could not estimate: runtime.dtype = 'float16' is not supported")
        assert "\n" not in verdict and "Traceback" not in verdict and "DeviceError" not in verdict
        assert str(modal.query_one("#go", Button).label) == "Launch anyway"
        assert modal.query_one("#launch-verdict").has_class("unknown")
        await pilot.press("escape")
        await pilot.pause()
        assert calls["launch"] == []
