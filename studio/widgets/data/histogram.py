"""Token-length histogram with the run's max_seq_len marked (plotext bars)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual_plotext import PlotextPlot

from studio.data_scan import histogram

if TYPE_CHECKING:
    from engine.api.data import LengthStats


class LengthHistogram(PlotextPlot):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stats: LengthStats | None = None

    def show(self, stats: LengthStats | None) -> None:
        self.stats = stats
        plt = self.plt
        plt.clear_figure()
        if stats is None or not stats.lengths:
            plt.title("token lengths: pick a run's tokenizer above")
        else:
            centres, counts = histogram(stats.lengths, bins=30)
            plt.bar(centres, counts, width=0.9, color="cyan")
            plt.vline(stats.max_seq_len, color="red")
            plt.title(f"tokens per record (red: max_seq_len {stats.max_seq_len})")
            plt.xlabel("tokens")
        self.refresh()
