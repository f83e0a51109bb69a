"""The simulated timeline of one decode step, in colour: host-to-device, GPU and device-to-host
lanes over a few layers, with the GPU's waits in red.

It draws a trace from `simulator.simulate_plan` (the simulator does the timing; this only
paints). The layers shown start where the KV cache starts to be offloaded, since that is where
the GPU can wait for PCIe: layers whose KV stays on the GPU never do. Each column is a slice of
time; a lane's cell shows the operation covering most of it (a letter per kind), `:` where the
lane is busy for less than half the slice, and `·` where it is idle (red on the GPU lane).
"""

from __future__ import annotations

from collections import defaultdict

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from advisor.documents import Trace
from advisor.opgraph import parse_op_id

KINDS = {  # kind: (glyph, colour)
    "load_weights": ("W", "blue"),
    "load_act": ("a", "magenta"),
    "load_kv": ("k", "cyan"),
    "store_kv": ("s", "cyan"),
    "store_act": ("t", "magenta"),
    "qkv": ("q", "green"),
    "recompute_kv": ("r", "bright_magenta"),
    "attention": ("A", "yellow"),
    "mlp": ("m", "green"),
    "out": ("o", "green"),
    "sample": ("S", "white"),
}
KIND_GLYPHS = {kind: (glyph, Style(color=colour)) for kind, (glyph, colour) in KINDS.items()}
IDLE_GPU = Style(color="red", bold=True)
DIM = Style(dim=True)
LANES = ("h2d", "gpu", "d2h", "cpu")
LABEL_W = 5


def _dur(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def render_timeline(trace: Trace, step: int, first_layer: int, layers: int, width: int) -> tuple[Text, str]:
    """The lanes over decode step `step`'s layers [first_layer, first_layer + layers), and a line
    on the GPU's waits there."""
    width = max(20, width - LABEL_W - 2)
    chosen = []
    for r in trace.records:
        s, layer, _, _, _ = parse_op_id(r.id)
        if s == step and first_layer <= layer < first_layer + layers:
            chosen.append(r)
    if not chosen:
        return Text(f"decode step {step}: no operations in layers {first_layer}–{first_layer + layers - 1}"), ""
    # from the chosen layers' first GPU operation (their loads may start long before, behind the
    # previous step's) to the last of their operations
    on_gpu = [r for r in chosen if r.lane == "gpu"] or chosen
    t0 = min(r.start_s for r in on_gpu)
    t1 = max(r.end_s for r in chosen)
    span = max(t1 - t0, 1e-12)
    dt = span / width
    cover: dict[str, list[dict[str, float]]] = {lane: [defaultdict(float) for _ in range(width)] for lane in LANES}
    used = set()
    for r in trace.records:
        if r.end_s <= t0 or r.start_s >= t1:
            continue
        used.add(r.lane)
        kind = r.id.split(".")[3]
        a, b = max(r.start_s, t0), min(r.end_s, t1)
        first, last = int((a - t0) / dt), min(int((b - t0) / dt), width - 1)
        for c in range(first, last + 1):
            overlap = min(b, t0 + (c + 1) * dt) - max(a, t0 + c * dt)
            if overlap > 0:
                cover[r.lane][c][kind] += overlap

    marks = [" "] * width
    starts: dict[int, float] = {}
    for r in chosen:
        if r.lane == "gpu":
            layer = parse_op_id(r.id)[1]
            starts[layer] = min(starts.get(layer, r.start_s), r.start_s)
    for layer, t in sorted(starts.items()):
        label = f"L{layer}"
        c = min(int((t - t0) / dt), width - len(label))
        if all(ch == " " for ch in marks[c:c + len(label)]):
            marks[c:c + len(label)] = label

    text = Text(" " * (LABEL_W + 1) + "".join(marks), style="dim")
    for lane in LANES:
        if lane not in used and lane == "cpu":
            continue
        row = Text(f"{lane:>{LABEL_W - 1}} │", style="bold")
        run, run_style = [], None
        for cell in cover[lane]:
            busy = sum(cell.values())
            if busy <= 0:
                glyph, style = "·", IDLE_GPU if lane == "gpu" else DIM
            elif busy < 0.5 * dt:
                glyph, style = ":", DIM
            else:
                kind = max(cell.items(), key=lambda kv: kv[1])[0]
                glyph, style = KIND_GLYPHS.get(kind, ("#", DIM))
            if style is not run_style and run:
                row.append("".join(run), run_style)
                run = []
            run_style = style
            run.append(glyph)
        if run:
            row.append("".join(run), run_style)
        row.append("│", style="bold")
        text.append("\n")
        text.append_text(row)
    legend = Text("\n" + " " * (LABEL_W + 1))
    shown = {k for lane in LANES for cell in cover[lane] for k in cell}
    for kind, (glyph, colour) in KINDS.items():
        if kind in shown:
            legend.append(glyph, Style(color=colour, bold=True))
            legend.append(f" {kind}  ", style="dim")
    legend.append("· idle", style="dim")
    text.append_text(legend)

    gpu = sorted((r for r in chosen if r.lane == "gpu"), key=lambda r: r.start_s)
    waits = [(nxt.start_s - prev.end_s, nxt.id) for prev, nxt in zip(gpu, gpu[1:]) if nxt.start_s > prev.end_s]
    head = f"layers {first_layer}–{first_layer + layers - 1}: {_dur(span)}; "
    if waits:
        total = sum(w for w, _ in waits)
        longest, before = max(waits)
        line = (head + f"the GPU waits {_dur(total)} ({100 * total / span:.0f}%), "
                f"longest {_dur(longest)} before {before.split('.c')[0]}")
    else:
        line = head + "the GPU does not wait here"
    return text, line


class Timeline(Static):
    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.caption = ""
        self.waits = ""

    def show(self, body: Text | str, caption: str, waits: str = "", error: bool = False) -> None:
        self.caption, self.waits = caption, waits
        text = Text()
        text.append(caption, style="bold")
        if waits:
            text.append("\n" + waits, style="yellow")
        if body:
            text.append("\n")
            text.append_text(body if isinstance(body, Text) else Text(str(body), style="red" if error else ""))
        self.update(text)
