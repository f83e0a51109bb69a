"""A text picture of one decode step: lanes as rows, time as columns, a few layers wide.

Perfetto shows a whole trace; a terminal needs one glance at the part that matters: which lane is
the bottleneck and where the GPU waits. Each column is a slice of time; a lane's cell shows the
operation that covers most of it (a letter per kind), `:` where the lane is busy for less than
half of the slice, and `.` where it is idle, so the GPU's waits for a transfer show as dots.
"""

from __future__ import annotations

from collections import defaultdict

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


def _duration_text(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def text_timeline(plan: Plan, trace: Trace, step: int, layers: int = 4, width: int = 96) -> str:
    """Lanes over the time of `step`'s first `layers` layers (all GPU batches; PREFILL for prefill)."""
    layers = max(1, min(layers, plan.model.num_layers))
    chosen = []
    for r in trace.records:
        s, layer, _, _, _ = parse_op_id(r.id)
        if s == step and layer < layers:
            chosen.append(r)
    step_name = "prefill" if step == PREFILL else f"decode step {step}"
    if not chosen:
        return f"{step_name}: no operations in the trace"
    t0 = min(r.start_s for r in chosen)
    t1 = max(r.end_s for r in chosen)
    span = max(t1 - t0, 1e-12)
    dt = span / width

    # time covered per (lane, column, glyph) by every record that overlaps the window
    cover: dict[str, list[dict[str, float]]] = {lane: [defaultdict(float) for _ in range(width)] for lane in LANE_ROWS}
    used = set()
    gpu_waits: list[tuple[float, str]] = []
    for r in trace.records:
        if r.end_s <= t0 or r.start_s >= t1:
            continue
        used.add(r.lane)
        glyph = GLYPHS.get(r.id.split(".")[3], "#")
        a, b = max(r.start_s, t0), min(r.end_s, t1)
        first, last = int((a - t0) / dt), min(int((b - t0) / dt), width - 1)
        cells = cover[r.lane]
        for c in range(first, last + 1):
            lo, hi = t0 + c * dt, t0 + (c + 1) * dt
            overlap = min(b, hi) - max(a, lo)
            if overlap > 0:
                cells[c][glyph] += overlap

    # GPU waits inside the window: gaps between consecutive GPU operations of the chosen ones
    gpu = sorted((r for r in chosen if r.lane == "gpu"), key=lambda r: r.start_s)
    for prev, nxt in zip(gpu, gpu[1:]):
        if nxt.start_s > prev.end_s:
            gpu_waits.append((nxt.start_s - prev.end_s, nxt.id))

    # layer marks above the GPU row: where each layer's first GPU operation starts
    marks = [" "] * width
    layer_start: dict[int, float] = {}
    for r in chosen:
        if r.lane in ("gpu", "cpu"):
            _, layer, _, _, _ = parse_op_id(r.id)
            layer_start[layer] = min(layer_start.get(layer, r.start_s), r.start_s)
    for layer, t in sorted(layer_start.items()):
        label = f"L{layer}"
        c = min(int((t - t0) / dt), width - len(label))
        if all(ch == " " for ch in marks[c:c + len(label)]):
            marks[c:c + len(label)] = label

    rows = [f"{step_name}, layers 0-{layers - 1}: {_duration_text(span)} "
            f"(1 column = {_duration_text(dt)})",
            f"      {''.join(marks)}"]
    for lane in LANE_ROWS:
        if lane not in used and lane == "cpu":
            continue
        line = []
        for cell in cover[lane]:
            busy = sum(cell.values())
            if busy <= 0:
                line.append(".")
            elif busy < 0.5 * dt:
                line.append(":")
            else:
                line.append(max(cell.items(), key=lambda kv: kv[1])[0])
        rows.append(f"{lane:>4s} |{''.join(line)}|")
    legend = ", ".join(f"{g} {k}" for k, g in GLYPHS.items())
    rows.append(f"      {legend}; ':' busy < half a column, '.' idle")
    if gpu_waits:
        total = sum(w for w, _ in gpu_waits)
        longest, before = max(gpu_waits)
        rows.append(f"      GPU waits {_duration_text(total)} in this window ({100 * total / span:.0f}%); "
                    f"longest {_duration_text(longest)}, before {before}")
    else:
        rows.append("      the GPU does not wait in this window")
    return "\n".join(rows)
