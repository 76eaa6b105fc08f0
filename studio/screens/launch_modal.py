"""The last step before a launch: the preset's pre-flight estimate, then Launch or Cancel.

Dismisses with True (launch) or False. Finding the device imports torch (engine.api.estimate.detect_target), so the
estimate is made in a thread worker while the dialog says "estimating…"; the device found is kept in
the caller's `targets` dict for the session, so a second launch answers at once. A preset that does
not fit is said in red with the estimator's advice, and the button becomes "Launch anyway": the
estimate is a model of memory, and the user may know better, but they have to say so.
"""

from __future__ import annotations

import io
from dataclasses import replace

from rich.console import Console, RenderableType
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from engine.api.estimate import Estimate, Target, device_peak
from engine.config import Preset
from studio import launcher
from studio.errors import shown_error
from studio.messages import EstimateFailed, EstimateReady

TargetCache = dict[tuple[str, str], Target]  # launcher.target_key -> the device detect_target found

ESTIMATING = "estimating… (finding the device and its memory; the first time, loading torch takes a few seconds)"


def plain_text(renderable: RenderableType, width: int = 100) -> str:
    """The renderable as the terminal would print it, without styles (for copying and for tests)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def headline(result: Estimate) -> str:
    """One line on top of the details: the verdict the user must not miss."""
    from studio.estimate_view import human_bytes, target_line

    target = result.target
    if not result.stages:
        return "Only the tokenizer stage: nothing to estimate (it needs little memory)."
    if result.fits is None:
        return f"Device memory unknown ({target_line(target)}): cannot tell whether it fits."
    if result.fits:
        needed = max(device_peak(stage.memory, target) for stage in result.stages)
        return f"✓ Fits in {target_line(target)}: needs about {human_bytes(needed)}."
    stages = ", ".join(f"{stage.stage} needs about {human_bytes(device_peak(stage.memory, target))}"
                       for stage in result.misfits)
    return f"✗ Does not fit in {target_line(target)}: {stages}."


class LaunchModal(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, preset: Preset, targets: TargetCache) -> None:
        super().__init__()
        self.preset = preset
        self.targets = targets
        self.result: Estimate | None = None
        self.error: str | None = None
        self.plain = ""  # the estimate as text, once it has arrived

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="wide"):
            yield Static(f"Launch {self.preset.name}?", id="dialog-title", markup=False)
            yield Static(ESTIMATING, id="launch-verdict", markup=False)
            yield Static("", id="launch-advice", markup=False)
            with VerticalScroll(id="dialog-body"):
                yield Static("", id="launch-estimate", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                # Disabled until the estimate is shown: launching is a decision made after reading it.
                yield Button("Launch", id="go", variant="success", disabled=True)

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()
        self.query_one("#launch-advice").display = False
        self._estimate(self.preset)

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate", name="estimate")
    def _estimate(self, preset: Preset) -> None:
        try:
            key = launcher.target_key(preset)
            target = self.targets.get(key)
            if target is None:
                target = launcher.detect_target(preset)
                self.targets[key] = target  # a plain dict write: the UI thread only reads it later
            result = launcher.estimate(preset, target)
        except Exception as error:  # noqa: BLE001 - the engine's paragraph, or a bug named as one; never a crash
            self.post_message(EstimateFailed(shown_error(error)))
            return
        self.post_message(EstimateReady(result))

    def on_estimate_ready(self, message: EstimateReady) -> None:
        from studio.estimate_view import estimate_renderable

        result = self.result = message.estimate
        misfit = {stage.stage for stage in result.misfits}
        # The advice of a stage that does not fit moves up into the red box; the details keep the rest.
        shown = [replace(stage, advice=[]) if stage.stage in misfit else stage for stage in result.stages]
        details = estimate_renderable(result.title, result.target, shown)
        self.query_one("#launch-estimate", Static).update(details)
        self.plain = plain_text(estimate_renderable(result.title, result.target, result.stages))
        advice = [f"- {note}" for stage in result.misfits for note in stage.advice]
        self._verdict(headline(result), advice, {True: "fits", None: "unknown", False: "misfit"}[result.fits])

    def on_estimate_failed(self, message: EstimateFailed) -> None:
        error = message.error
        self.error = error.message
        self._verdict(f"Could not estimate: {error.message}", [], "unknown")
        if error.traceback:  # a bug: its frames go where the estimate would have been, to scroll and copy
            self.plain = error.traceback
            self.query_one("#launch-estimate", Static).update(Text(error.traceback, style="dim"))

    def _verdict(self, text: str, advice: list[str], kind: str) -> None:
        verdict = self.query_one("#launch-verdict", Static)
        verdict.update(text)
        verdict.set_classes(kind)
        box = self.query_one("#launch-advice", Static)
        box.update("\n".join(advice))
        box.display = bool(advice)
        self.query_one("#dialog").set_class(kind == "misfit", "danger")
        go = self.query_one("#go", Button)
        go.disabled = False
        if kind == "fits":
            go.focus()  # the common case: Enter launches
        else:
            # Cancel keeps the focus, so a stray Enter does not start a run the estimate warns about.
            go.label = "Launch anyway"
            go.variant = "error" if kind == "misfit" else "warning"

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "go")

    def action_cancel(self) -> None:
        self.dismiss(False)
