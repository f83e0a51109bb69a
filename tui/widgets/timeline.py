"""The simulated timeline of one decode step, in colour: host-to-device, GPU and device-to-host
lanes over a few layers, with the GPU's waits in red.

It draws a trace from `simulator.simulate_plan` (the simulator does the timing; this only
paints). The layers shown start where the KV cache starts to be offloaded, since that is where
the GPU can wait for PCIe: layers whose KV stays on the GPU never do. Each column is a slice of
time; a lane's cell shows the operation covering most of it (a letter per kind), `:` where the
lane is busy for less than half the slice, and `·` where it is idle (red on the GPU lane).
"""

from __future__ import annotations

from rich.console import Group
from rich.style import Style
from rich.text import Text
from textual.message import Message
from textual.widgets import Static

from advisor.documents import Trace
from simulator.timeline import GLYPHS, LANE_ROWS, duration_text, step_window
from tui.widgets.runs import append_runs

COLOURS = {
    "load_weights": "blue",
    "load_act": "magenta",
    "load_kv": "cyan",
    "store_kv": "cyan",
    "store_act": "magenta",
    "qkv": "green",
    "recompute_kv": "bright_magenta",
    "attention": "yellow",
    "mlp": "green",
    "sample": "white",
}
KINDS = {kind: (glyph, COLOURS.get(kind, "white")) for kind, glyph in GLYPHS.items()}  # the simulator's letters
KIND_GLYPHS = {kind: (glyph, Style(color=colour)) for kind, (glyph, colour) in KINDS.items()}
IDLE_GPU = Style(color="red", bold=True)
DIM = Style(dim=True)
LANES = LANE_ROWS
LABEL_W = 5


def render_timeline(trace: Trace, step: int, first_layer: int, layers: int, width: int,
                    batch: int | None = None) -> tuple[Text, str]:
    """The lanes over decode step `step`'s layers [first_layer, first_layer + layers) of GPU batch
    `batch` (all when None), and a line on the GPU's waits there (laid out by
    `simulator.timeline.step_window`)."""
    width = max(20, width - LABEL_W - 2)
    window = step_window(trace, step, first_layer, layers, width, from_first_gpu_op=True, batch=batch)
    if window is None:
        return Text(f"decode step {step}: no operations in layers {first_layer}–{first_layer + layers - 1}"), ""
    text = Text(" " * (LABEL_W + 1) + window.marks, style="dim")
    for lane in LANES:
        if lane not in window.used and lane == "cpu":
            continue
        row = Text(f"{lane:>{LABEL_W - 1}} │", style="bold")
        cells = []
        for column in range(width):
            kind, busy = window.cell(lane, column)
            if busy <= 0:
                cells.append(("·", IDLE_GPU if lane == "gpu" else DIM))
            elif busy < 0.5 * window.dt:
                cells.append((":", DIM))
            else:
                cells.append(KIND_GLYPHS.get(kind, ("#", DIM)))
        append_runs(row, cells)
        row.append("│", style="bold")
        text.append("\n")
        text.append_text(row)
    legend = Text("\n" + " " * (LABEL_W + 1))
    shown = {k for lane in LANES for cell in window.cover[lane] for k in cell}
    for kind, (glyph, colour) in KINDS.items():
        if kind in shown:
            legend.append(glyph, Style(color=colour, bold=True))
            legend.append(f" {kind}  ", style="dim")
    legend.append("· idle", style="dim")
    text.append_text(legend)

    head = f"layers {first_layer}–{first_layer + layers - 1}: {duration_text(window.span)}; "
    if window.gpu_waits:
        total = sum(w for w, _ in window.gpu_waits)
        longest, before = max(window.gpu_waits)
        line = (head + f"the GPU waits {duration_text(total)} ({100 * total / window.span:.0f}%), "
                f"longest {duration_text(longest)} before {before.split('.c')[0]}")
    else:
        line = head + "the GPU does not wait here"
    return text, line


class Timeline(Static):
    """The caption (wrapped) above the lanes (drawn for `width` columns, cropped, never wrapped)
    and their legend (wrapped); posts WidthChanged when its width no longer is the one they were drawn for."""

    class WidthChanged(Message):
        pass

    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.caption = ""
        self.waits = ""
        self.drawn_width: int | None = None

    def show(self, body: Text | str, caption: str, waits: str = "", error: bool = False,
             width: int | None = None) -> None:
        self.caption, self.waits, self.drawn_width = caption, waits, width
        head = Text()
        head.append(caption, style="bold")
        if waits:
            head.append("\n" + waits, style="yellow")
        if not body:
            self.update(head)
        elif isinstance(body, Text):  # render_timeline's: the lanes, then the legend on its last line
            *lanes, legend = body.split("\n")
            grid = Text("\n", no_wrap=True, overflow="crop").join(lanes)
            self.update(Group(head, grid, legend) if lanes else Group(head, legend))
        else:
            self.update(Group(head, Text(str(body), style="red" if error else "")))
        if width is not None and self.content_size.width and self.content_size.width != width:
            self.on_resize()  # laid out again while they were drawn

    def on_resize(self) -> None:
        if self.drawn_width is not None and self.content_size.width != self.drawn_width:
            self.drawn_width = None
            self.post_message(self.WidthChanged())
