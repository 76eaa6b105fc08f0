"""The Data tab: check a jsonl file before training on it.

Record count and bad lines come from the engine's reader (`on_bad_line="skip"`, line numbers as a
run would report them); token lengths use a run's tokenizer (loaded in a worker); the browser shows
each record as the model sees it with the trained characters highlighted; the down-sampler writes a
smaller copy. All file work happens in thread workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from engine.api.data import length_stats, load_tokenizer, run_tokenizers, sample_jsonl, scan_file
from engine.errors import DataError
from studio.data_scan import dataset_files, render_record
from studio.messages import DataScanned, SampleWritten, TokenStats
from studio.widgets.data.histogram import LengthHistogram
from studio.widgets.pane import Pane

if TYPE_CHECKING:
    from engine.api.data import DataReport, LengthStats


class DataPane(Pane):
    DEFAULT_FOCUS = "#data-files"
    BINDINGS = [
        Binding("]", "record(1)", "Next record"),
        Binding("[", "record(-1)", "Prev record"),
        Binding("ctrl+e", "sample", "Down-sample"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.report: DataReport | None = None
        self.lengths: LengthStats | None = None
        self.tokenizer: Any = None  # the chosen run's tokenizer, once loaded
        self.index = 0
        self.tokenizers: list[tuple[str, Path, dict[str, int]]] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="data-top"):
            yield Input(placeholder="path to a .jsonl file, Enter to read it", id="data-path", compact=True)
            yield Select([], prompt="tokenizer of run…", id="data-tokenizer", compact=True)
        with Horizontal(id="data-body"):
            with Vertical(id="data-side"):
                yield OptionList(id="data-files")
                yield Static("pick a file", id="data-summary")
            with VerticalScroll(id="data-main"):
                yield LengthHistogram(id="data-hist")
                yield Static("", id="data-tokens")
                yield Static("", id="data-record-head")
                yield Static("", id="data-record")
                with Horizontal(id="data-sampler", classes="sampler-line"):
                    yield Label("down-sample to")
                    yield Input("72", id="sample-mb", restrict=r"[0-9.]*", compact=True)
                    yield Label("MiB, seed")
                    yield Input("42", id="sample-seed", restrict=r"[0-9]*", compact=True)
                with Horizontal(classes="sampler-line"):
                    yield Input(placeholder="output .jsonl", id="sample-out", compact=True)
                    yield Button("Sample ^e", id="sample-go", compact=True)

    def on_mount(self) -> None:
        self.refresh_sources()

    def focus_default(self) -> None:
        self.refresh_sources()
        super().focus_default()

    def refresh_sources(self) -> None:
        files = self.query_one("#data-files", OptionList)
        highlighted = files.highlighted
        files.clear_options()
        for path in dataset_files():
            files.add_option(Option(f"{path.name}  [dim]{path.stat().st_size / 1024:,.0f} KiB[/]", id=str(path)))
        if highlighted is not None and highlighted < files.option_count:
            files.highlighted = highlighted
        self.tokenizers = run_tokenizers(self.studio_app.runs_dir)
        select = self.query_one("#data-tokenizer", Select)
        current = select.value
        with self.prevent(Select.Changed):  # keep the chosen tokenizer (and its loaded copy)
            select.set_options([(run_id, str(directory)) for run_id, directory, _ in self.tokenizers])
            if current is not Select.NULL and any(str(d) == current for _, d, _ in self.tokenizers):
                select.value = current

    # ---- reading a file

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.open(Path(event.option.id))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "data-path" and event.value.strip():
            self.open(Path(event.value.strip()).expanduser())
        elif event.input.id and event.input.id.startswith("sample-"):
            self.action_sample()

    def open(self, path: Path) -> None:
        self.query_one("#data-path", Input).value = str(path)
        self.query_one("#data-summary", Static).update(f"reading {path.name}…")
        self.query_one("#sample-out", Input).value = str(path.with_name(f"{path.stem}_sample.jsonl"))
        self._scan(path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="data-scan", name="reading the file")
    def _scan(self, path: Path) -> None:
        if not path.is_file():
            raise DataError(f"{path}: no such file; pick one from the list or type the path of a .jsonl file")
        self.post_message(DataScanned(scan_file(path)))

    def on_data_scanned(self, message: DataScanned) -> None:
        self.report, self.index, self.lengths = message.report, 0, None
        self.query_one("#data-summary", Static).update(self._summary(message.report))
        self.show_record()
        self.query_one(LengthHistogram).show(None)
        self.query_one("#data-tokens", Static).update("")
        self._measure()

    @staticmethod
    def _summary(report: DataReport) -> Text:
        text = Text()
        text.append(f"{report.path.name}\n", style="bold")
        text.append(f"{report.kind} · {report.size_bytes / 1024 / 1024:,.2f} MiB\n")
        text.append(f"{report.records:,} records of {report.lines:,} lines\n")
        if report.skipped:
            text.append(f"{report.skipped:,} bad line(s)", style="bold red")
            shown = len(report.bad_lines)
            text.append(f" (first {shown}):\n" if report.skipped > shown else ":\n", style="red")
            for line_no, reason in report.bad_lines:
                text.append(f"  line {line_no}: ", style="red")
                text.append(f"{reason}\n")
        else:
            text.append("no bad lines\n", style="green")
        return text

    # ---- token lengths

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "data-tokenizer":
            self.tokenizer = None
            self._measure()

    def _measure(self) -> None:
        select = self.query_one("#data-tokenizer", Select)
        if self.report is None or select.value is Select.NULL:
            return
        directory = Path(str(select.value))
        seq = next((s for _, d, s in self.tokenizers if d == directory), {}).get(self.report.kind, 512)
        self.query_one("#data-tokens", Static).update(f"tokenizing with {directory.parent.name}…")
        self._tokenize(self.report.path, self.report.kind, directory, seq)

    @work(thread=True, exclusive=True, exit_on_error=False, group="data-tokens", name="measuring token lengths")
    def _tokenize(self, path: Path, kind: str, directory: Path, max_seq_len: int) -> None:
        tokenizer = load_tokenizer(directory)
        self.post_message(TokenStats(length_stats(path, kind, tokenizer, directory, max_seq_len), tokenizer))

    def on_token_stats(self, message: TokenStats) -> None:
        self.lengths, self.tokenizer = message.stats, message.tokenizer
        lengths = self.lengths.lengths
        self.query_one(LengthHistogram).show(self.lengths)
        sample = f" (first {self.lengths.truncated_to:,} records)" if self.lengths.truncated_to else ""
        if lengths:
            ordered = sorted(lengths)
            self.query_one("#data-tokens", Static).update(
                f"{sum(lengths):,} tokens{sample} · mean {sum(lengths) / len(lengths):,.0f} · median "
                f"{ordered[len(ordered) // 2]:,} · max {ordered[-1]:,} · "
                f"[b]{self.lengths.beyond:.1%}[/] of tokens beyond max_seq_len {self.lengths.max_seq_len}")
        self.show_record()

    # ---- record browser

    def action_record(self, delta: int) -> None:
        if self.report and self.report.records_sample:
            self.index = max(0, min(len(self.report.records_sample) - 1, self.index + delta))
            self.show_record()

    def show_record(self) -> None:
        head = self.query_one("#data-record-head", Static)
        body = self.query_one("#data-record", Static)
        if not self.report or not self.report.records_sample:
            head.update("")
            body.update("")
            return
        line_no, record = self.report.records_sample[self.index]
        template = "the run's chat template" if self.tokenizer is not None else "the built-in chat template"
        head.update(f"record {self.index + 1}/{len(self.report.records_sample)} (line {line_no}) · "
                    f"[black on green] trained [/] characters · rendered with {template} · [ ] to move")
        try:
            body.update(render_record(record, self.report.kind, self.tokenizer))
        except ValueError as error:
            body.update(Text(f"cannot render this record: {error}", style="red"))

    # ---- down-sampler

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "sample-go":
            self.action_sample()

    def action_sample(self) -> None:
        if self.report is None:
            self.notify("pick a file first", severity="warning")
            return
        try:
            target = float(self.query_one("#sample-mb", Input).value)
            seed = int(self.query_one("#sample-seed", Input).value or 42)
        except ValueError:
            self.notify("target MiB and seed must be numbers", severity="error")
            return
        out = Path(self.query_one("#sample-out", Input).value.strip() or "")
        if not out.name or out.resolve() == self.report.path.resolve():
            self.notify("choose an output file other than the input", severity="error")
            return
        self.notify(f"sampling {self.report.path.name} to {target} MiB…")
        self._sample(self.report.path, out, target, seed)

    @work(thread=True, exclusive=True, exit_on_error=False, group="data-sample", name="down-sampling")
    def _sample(self, src: Path, dst: Path, target_mb: float, seed: int) -> None:
        self.post_message(SampleWritten(sample_jsonl(src, dst, target_mb, seed)))

    def on_sample_written(self, message: SampleWritten) -> None:
        r = message.report
        self.notify(f"kept {r.kept_lines:,} of {r.source_lines:,} lines ({r.kept_bytes / 1024 / 1024:,.2f} MiB) → {r.out_path}")
        self.refresh_sources()
