"""A line chart with real axes (plotext), fed with already-downsampled series."""

from __future__ import annotations

from dataclasses import dataclass

from textual_plotext import PlotextPlot

COLORS = ("cyan", "orange", "green", "magenta", "yellow", "blue", "red")


@dataclass(frozen=True)
class Line:
    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    color: str | None = None
    marker: str = "braille"


class MetricPlot(PlotextPlot):
    """Call `show(lines)`; drawing happens at the next frame, so bursts of updates cost one render."""

    def __init__(self, title: str, *, ylabel: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title_text, self.ylabel = title, ylabel
        self.lines: list[Line] = []
        self.log_y = False

    def show(self, lines: list[Line], log_y: bool = False, title: str | None = None) -> None:
        self.lines, self.log_y = lines, log_y
        if title is not None:
            self.title_text = title
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.xlabel("step")
        drawn = False
        for index, line in enumerate(self.lines):
            points = [(x, y) for x, y in zip(line.xs, line.ys) if not self.log_y or y > 0]
            if not points:
                continue
            xs, ys = zip(*points)
            color = line.color or COLORS[index % len(COLORS)]
            plt.plot(list(xs), list(ys), label=line.label or None, color=color, marker=line.marker)
            drawn = True
        if drawn and self.log_y:
            plt.yscale("log")
        plt.title(self.title_text if drawn else f"{self.title_text} (waiting for data)")
        self.refresh()
