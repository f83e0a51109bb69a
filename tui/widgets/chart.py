"""The split chart: decode step time and throughput over the whole split range.

One line per panel, drawn with eighth blocks (▁▂▃▄▅▆▇: eight levels per cell, in every monospace
font, unlike braille) — the LP optimum's configuration swept over every split by the vectorised
cost model, each column showing the mean over its splits — with the LP optimum and the current
split marked by coloured columns and by markers on the axis, the current plan's own figure as a dot (off the curve when the scheduler picks another
configuration for a forced split), and the scheduler's best with the split forced, sampled
across the range, as small diamonds. The widget is focusable and takes the screen's default
focus, so the split keys never land in an input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from tui.explore import Curve
from tui.widgets.runs import append_runs

BLOCKS = " ▁▂▃▄▅▆▇█"
AXIS_W = 9  # y-axis labels
CURVE = Style(color="cyan")
OPTIMUM = Style(color="green", bold=True)
CURRENT = Style(color="yellow", bold=True)
FORCED = Style(color="magenta")
DIM = Style(dim=True)


@dataclass
class ChartData:
    curve: Curve | None = None
    optimum_split: int | None = None
    current_split: int | None = None
    current_step_s: float | None = None
    forced: list[tuple[int, float | None]] | None = None
    message: str = ""  # shown instead of the chart while there is no curve
    top: int = 0  # largest split
    sweeping: bool = False  # the forced splits are still being solved


class Canvas:
    """Cells of (character, style): columns filled up to a level (eighths of a cell), and glyphs
    on top."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.levels = np.zeros(width, dtype=int)
        self.glyphs: dict[tuple[int, int], tuple[str, Style]] = {}
        self.column_styles: dict[int, Style] = {}

    def rows(self, base: Style) -> list[Text]:
        """One Text per row (top first), with runs of one style appended together."""
        return [append_runs(Text(), (self.cell(cy, cx, base) for cx in range(self.width)))
                for cy in range(self.height)]

    def cell(self, cy: int, cx: int, base: Style) -> tuple[str, Style]:
        glyph = self.glyphs.get((cy, cx))
        if glyph:
            return glyph
        fill = int(self.levels[cx]) - 8 * (self.height - 1 - cy)
        # the cell holding the column's level shows it (eighths); the marked columns
        # (optimum, current) are filled below it, the others left open: a line
        if 0 < fill <= 8:
            char = BLOCKS[fill]
        elif fill > 8 and cx in self.column_styles:
            char = "█"
        else:
            char = " "
        return char, self.column_styles.get(cx, base)


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


class SplitChart(Widget, can_focus=True):
    """Step time (ms) and throughput (tokens/s) against the split."""

    DEFAULT_CSS = """
    SplitChart { height: 1fr; min-height: 10; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.data = ChartData(message="solving…")

    def show(self, data: ChartData) -> None:
        self.data = data
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        d = self.data
        if d.curve is None:
            return Text(d.message or "no chart", style=DIM)
        if width < AXIS_W + 10 or height < 7:
            return Text(f"no room for the chart ({width}×{height}; it needs {AXIS_W + 10}×7)", style=DIM)
        plot_w = width - AXIS_W
        lines: list[Text] = self._legend(width)
        used = len(lines) + 2  # the legend, the axis line and its labels
        panel_h = (height - used) // 2
        ms = d.curve.step_s * 1e3
        tps = d.curve.tokens_per_s
        cur_ms = None if d.current_step_s is None else d.current_step_s * 1e3
        forced_ms = [(s, None if t is None else t * 1e3) for s, t in (d.forced or [])]
        lines += self._panel(plot_w, panel_h, ms, cur_ms, forced_ms, "step ms")
        cur_tps = None if not d.current_step_s else d.curve.batch / d.current_step_s
        forced_tps = [(s, None if not t else d.curve.batch / t) for s, t in (d.forced or [])]
        lines += self._panel(plot_w, height - used - panel_h, tps, cur_tps, forced_tps, "tok/s")
        lines += self._axis(plot_w)
        return Text("\n").join(lines)

    # --- pieces -------------------------------------------------------------------------------

    def _legend(self, width: int) -> list[Text]:
        """The legend's items, wrapped between items to `width`."""
        d = self.data
        items = [("▃▄▅ ", CURVE, "LP config")]
        if d.optimum_split is not None:
            items.append(("▲ ", OPTIMUM, f"optimum {d.optimum_split}"))
        if d.current_split is not None:
            items.append(("● ", CURRENT, f"current {d.current_split}"))
        if d.forced:
            items.append(("◆ ", FORCED, "best, split forced"))
        elif d.sweeping:
            items.append(("◆ ", DIM, "sweeping…"))
        lines, line = [], Text()
        for glyph, style, label in items:
            if line.cell_len and line.cell_len + len(glyph) + len(label) > width:
                lines.append(line)
                line = Text()
            line.append(glyph, style)
            line.append(label + "  ", DIM)
        lines.append(line)
        return lines

    def _column(self, split: int | None, plot_w: int) -> int | None:
        if split is None or self.data.top <= 0:
            return None
        return min(plot_w - 1, max(0, int(split / self.data.top * plot_w)))

    def _panel(self, plot_w: int, rows: int, values: np.ndarray, current: float | None,
               forced: list[tuple[int, float | None]], label: str) -> list[Text]:
        d = self.data
        extra = [v for _, v in forced if v is not None] + ([current] if current is not None else [])
        finite = values[np.isfinite(values)]
        lo = min([float(finite.min())] + extra) if finite.size else 0.0
        hi = max([float(finite.max())] + extra) if finite.size else 1.0
        if hi - lo < 1e-12:
            lo, hi = lo * 0.95, hi * 1.05 + 1e-12
        pad = (hi - lo) * 0.05
        lo, hi = lo - pad, hi + pad
        canvas = Canvas(plot_w, rows)
        levels = rows * 8

        def level_of(v: float) -> int:
            return int(round((v - lo) / (hi - lo) * levels))

        def row_of(v: float) -> int:
            return min(rows - 1, max(0, rows - 1 - (level_of(v) - 1) // 8))

        # one value per column: the mean of the curve over the column's splits
        edges = np.linspace(0, d.top, plot_w + 1)
        for cx in range(plot_w):
            inside = (d.curve.splits >= edges[cx]) & (d.curve.splits <= edges[cx + 1])
            v = values[inside].mean() if inside.any() else np.interp(edges[cx:cx + 2].mean(), d.curve.splits, values)
            canvas.levels[cx] = max(1, level_of(float(v))) if np.isfinite(v) else 0
        for marker, style in ((d.optimum_split, OPTIMUM), (d.current_split, CURRENT)):
            cx = self._column(marker, plot_w)
            if cx is not None:
                canvas.column_styles[cx] = style
        for split, v in forced:
            cx = self._column(split, plot_w)
            if v is not None and cx is not None:
                canvas.glyphs[(row_of(v), cx)] = ("◆", FORCED)
        cx = self._column(d.current_split, plot_w)
        if current is not None and cx is not None:
            canvas.glyphs[(row_of(current), cx)] = ("●", CURRENT)
        out = []
        for cy, row in enumerate(canvas.rows(CURVE)):
            if cy == 0:
                axis = f"{_fmt(hi):>{AXIS_W - 2}} ┤"
            elif cy == rows - 1:
                axis = f"{_fmt(lo):>{AXIS_W - 2}} ┤"
            elif cy == rows // 2:
                axis = f"{label:>{AXIS_W - 2}} │"
            else:
                axis = " " * (AXIS_W - 2) + " │"
            out.append(Text(axis, style=DIM) + row)
        return out

    def _axis(self, plot_w: int) -> list[Text]:
        d = self.data
        line = Text(" " * (AXIS_W - 1) + "└", style=DIM)
        marks = ["─"] * plot_w
        styles = [DIM] * plot_w
        for split, glyph, style in ((d.optimum_split, "▲", OPTIMUM), (d.current_split, "●", CURRENT)):
            cx = self._column(split, plot_w)
            if cx is not None:
                marks[cx], styles[cx] = glyph, style
        for mark, style in zip(marks, styles):
            line.append(mark, style)
        return [line, Text(f"{'split':>{AXIS_W - 2}}  " + "".join(tick_labels(d.top, plot_w)), style=DIM)]


def tick_labels(top: int, width: int, ticks: int = 4) -> list[str]:
    """The split axis's labels, one character per column: 0, top/ticks, …, top at their columns,
    a space at least between two; the ends first, then each inner tick that still has room."""
    cells = [" "] * width
    taken: list[tuple[int, int]] = []  # [start, end) of each label placed
    for i in [0, ticks] + list(range(1, ticks)):
        value = str(round(top * i / ticks))
        if len(value) > width:
            continue
        cx = min(width - len(value), max(0, round(i / ticks * (width - 1)) - len(value) // 2))
        if any(cx < end + 1 and start < cx + len(value) + 1 for start, end in taken):
            continue  # it would touch a label placed before
        taken.append((cx, cx + len(value)))
        cells[cx:cx + len(value)] = value
    return cells
