"""A text picture of one decode step: lanes as rows, time as columns, a few layers wide.

Perfetto shows a whole trace; a terminal needs one glance at the part that matters: which lane is
the bottleneck and where the GPU waits. Each column is a slice of time; a lane's cell shows the
operation that covers most of it (a letter per kind), `:` where the lane is busy for less than
half of the slice, and `.` where it is idle, so the GPU's waits for a transfer show as dots.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from advisor.documents import Plan, Trace
from advisor.opgraph import PREFILL, parse_op_id

GLYPHS = {
    "load_weights": "W",
    "load_act": "a",
    "load_kv": "k",
    "store_kv": "s",
    "store_act": "t",
    "qkv": "q",
    "recompute_kv": "r",
    "attention": "A",
    "mlp": "m",
    "sample": "S",
}
LANE_ROWS = ("h2d", "gpu", "d2h", "cpu")


def duration_text(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


@dataclass
class StepWindow:
    """The operations of a few layers of one step, laid out in `width` time columns."""

    t0: float
    span: float
    dt: float
    cover: dict[str, list[dict[str, float]]]  # lane → per column, seconds covered by each kind
    used: set[str]
    marks: str  # "L{layer}" where each layer's first GPU operation starts
    gpu_waits: list[tuple[float, str]]  # (gap, id of the GPU operation that waited)

    def cell(self, lane: str, column: int) -> tuple[str, float]:
        """(kind covering most of the cell or '', seconds the lane is busy in it)."""
        cell = self.cover[lane][column]
        busy = sum(cell.values())
        kind = max(cell.items(), key=lambda kv: kv[1])[0] if busy > 0 else ""
        return kind, busy


def shown_batch(plan: Plan) -> int | None:
    """The GPU batch a picture of one step shows: in the row schedule with several, the first (they
    run one after another, each through every step, so one step of all of them spans the run);
    None (all of them) otherwise."""
    return 0 if plan.schedule == "row" and plan.workload.gpu_batches > 1 else None


def step_window(trace: Trace, step: int, first_layer: int, layers: int, width: int,
                from_first_gpu_op: bool = False, batch: int | None = None) -> StepWindow | None:
    """Lay out step `step`'s layers [first_layer, first_layer + layers) (None if it has none), of
    GPU batch `batch` (all when None).

    The window runs from the chosen operations' first start (or, with `from_first_gpu_op`, their
    first GPU operation: their loads may start long before, behind the previous step's) to their
    last end; every record overlapping it is drawn."""
    chosen = []
    for r in trace.records:
        s, layer, b, _, _ = parse_op_id(r.id)
        if s == step and first_layer <= layer < first_layer + layers and batch in (None, b):
            chosen.append(r)
    if not chosen:
        return None
    starters = [r for r in chosen if r.lane == "gpu"] if from_first_gpu_op else []
    t0 = min(r.start_s for r in (starters or chosen))
    t1 = max(r.end_s for r in chosen)
    span = max(t1 - t0, 1e-12)
    dt = span / width
    cover: dict[str, list[dict[str, float]]] = {lane: [defaultdict(float) for _ in range(width)] for lane in LANE_ROWS}
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
    layer_start: dict[int, float] = {}
    for r in chosen:
        if r.lane in ("gpu", "cpu"):
            layer = parse_op_id(r.id)[1]
            layer_start[layer] = min(layer_start.get(layer, r.start_s), r.start_s)
    for layer, t in sorted(layer_start.items()):
        label = f"L{layer}"
        c = max(0, min(int((t - t0) / dt), width - len(label)))
        if all(ch == " " for ch in marks[c:c + len(label)]):
            marks[c:c + len(label)] = label

    gpu = sorted((r for r in chosen if r.lane == "gpu"), key=lambda r: r.start_s)
    waits = [(nxt.start_s - prev.end_s, nxt.id) for prev, nxt in zip(gpu, gpu[1:]) if nxt.start_s > prev.end_s]
    return StepWindow(t0, span, dt, cover, used, "".join(marks), waits)


def text_timeline(plan: Plan, trace: Trace, step: int, layers: int = 4, width: int = 96,
                  first_layer: int = 0) -> str:
    """Lanes over the time of `step`'s layers from `first_layer` (PREFILL for prefill), of the GPU
    batch `shown_batch` picks."""
    layers = max(1, min(layers, plan.model.num_layers - first_layer))
    batch = shown_batch(plan)
    step_name = "prefill" if step == PREFILL else f"decode step {step}"
    if batch is not None:
        step_name += f" of GPU batch b{batch} (of {plan.workload.gpu_batches}, run one after another)"
    window = step_window(trace, step, first_layer, layers, width, batch=batch)
    if window is None:
        return f"{step_name}: no operations in the trace"
    rows = [f"{step_name}, layers {first_layer}-{first_layer + layers - 1}: {duration_text(window.span)} "
            f"(1 column = {duration_text(window.dt)})",
            f"      {window.marks}"]
    for lane in LANE_ROWS:
        if lane not in window.used and lane == "cpu":
            continue
        line = []
        for column in range(width):
            kind, busy = window.cell(lane, column)
            if busy <= 0:
                line.append(".")
            elif busy < 0.5 * window.dt:
                line.append(":")
            else:
                line.append(GLYPHS.get(kind, "#"))
        rows.append(f"{lane:>4s} |{''.join(line)}|")
    legend = ", ".join(f"{g} {k}" for k, g in GLYPHS.items())
    rows.append(f"      {legend}; ':' busy < half a column, '.' idle")
    if window.gpu_waits:
        total = sum(w for w, _ in window.gpu_waits)
        longest, before = max(window.gpu_waits)
        rows.append(f"      GPU waits {duration_text(total)} in this window ({100 * total / window.span:.0f}%); "
                    f"longest {duration_text(longest)}, before {before}")
    else:
        rows.append("      the GPU does not wait in this window")
    return "\n".join(rows)
