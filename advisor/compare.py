"""`advisor compare`: the prediction held against the measurement, operation by operation.

A predicted trace (simulated on the fly from the plan, or read with `--predicted`) and a measured
trace of the same plan share their operation ids (`advisor.opgraph`), so they join exactly. For
each operation: predicted and measured duration, their ratio (measured / predicted) and the
absolute % error; grouped by kind, by layer and by step with medians and 95th percentiles; the
decode step times and the lanes' busy fractions side by side; the largest disagreements named;
and a Chrome trace with both timelines as separate track groups.

This module also owns the question "does this measured trace belong to this plan?" (fingerprint,
operation ids, device kind, not empty), which `advisor calibrate` asks too: a trace of another
plan is refused in one line rather than compared or fitted to nonsense.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from advisor.documents import HardwareProfile, Plan, Trace, TraceSummary, check_distinct, check_writable, load_document
from advisor.errors import UserError
from advisor.opgraph import PREFILL, OpGraph, build_graph
from advisor.tracesummary import summarise

TOP_DISAGREEMENTS = 8

# ---------------------------------------------------------------------------------------------
# Does a trace belong to a plan?
# ---------------------------------------------------------------------------------------------


def trace_device_kind(trace: Trace) -> str | None:
    """'cuda' or 'cpu' as the trace says (extra['device_kind'], else its device name), or None."""
    kind = trace.extra.get("device_kind")
    if kind in ("cuda", "cpu"):
        return str(kind)
    text = trace.device.strip().lower()
    if text.startswith("cpu"):
        return "cpu"
    if text.startswith("cuda") or "nvidia" in text or "gpu" in text:
        return "cuda"
    return None


def check_device(hw: HardwareProfile, trace: Trace, where: str) -> None:
    """A trace measured on one kind of device cannot judge or calibrate a profile of another."""
    kind = trace_device_kind(trace)
    if kind is not None and kind != hw.device_kind:
        raise UserError(
            f"{where}: measured on a {kind} device ({trace.device}), but hardware profile {hw.name} is for "
            f"device kind {hw.device_kind}: use a {kind} profile (and, to compare, a plan made with one; "
            f"advisor profile --device {kind} measures this machine)"
        )


def check_trace(plan: Plan, trace: Trace, where: str, graph: OpGraph | None = None,
                plan_where: str = "the plan") -> OpGraph:
    """Refuse, in one line, a trace that is empty or was not made from `plan`; return the graph."""
    if not trace.records:
        raise UserError(f"{where}: the trace has no records")
    fingerprint = plan.fingerprint()
    if trace.plan_fingerprint != fingerprint:
        raise UserError(
            f"{where}: recorded for plan {trace.plan_fingerprint}, not for {plan_where} ({fingerprint}): "
            f"another model, workload, schedule or split"
        )
    graph = graph or build_graph(plan)
    ops = graph.by_id()
    for record in trace.records:
        op = ops.get(record.id)
        if op is None:
            raise UserError(f"{where}: operation {record.id} is not an operation of {plan_where}")
        if record.end_s < record.start_s:
            raise UserError(f"{where}: operation {record.id} ends before it starts")
    return graph


def plan_beside(measured_path: str | Path, trace: Trace) -> Path | None:
    """The plan a measured trace names (extra['plan_path']), else `<measured>.plan.json` beside it."""
    measured_path = Path(measured_path)
    recorded = trace.extra.get("plan_path")
    if isinstance(recorded, str) and recorded:
        path = Path(recorded)
        if not path.is_absolute():
            path = measured_path.parent / path
        if path.is_file():
            return path
    sibling = measured_path.with_name(measured_path.name.removesuffix(".json") + ".plan.json")
    return sibling if sibling.is_file() else None


def durations(trace: Trace, serial: bool) -> dict[str, float]:
    """Seconds each operation of a trace took.

    On a serial device (the CPU mode) nothing overlaps, so the host's time between two
    operations (issuing the next one) is part of what the next one costs: an operation's time runs
    from the end of the one before it. That is the time the simulator must give it for the step
    times to come out right. Elsewhere it is the operation's own start to end.
    """
    if not serial:
        return {r.id: r.end_s - r.start_s for r in trace.records}
    out, previous_end = {}, None
    for r in sorted(trace.records, key=lambda r: (r.start_s, r.end_s)):
        start = previous_end if previous_end is not None and previous_end <= r.start_s else r.start_s
        out[r.id] = r.end_s - start
        previous_end = r.end_s if previous_end is None else max(previous_end, r.end_s)
    return out


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------


@dataclass
class OpPair:
    id: str
    kind: str
    lane: str
    step: int
    layer: int
    predicted_s: float
    measured_s: float

    @property
    def ratio(self) -> float | None:
        return self.measured_s / self.predicted_s if self.predicted_s > 0 else None

    @property
    def error_pct(self) -> float:
        if self.measured_s <= 0:
            return 0.0 if self.predicted_s <= 0 else 100.0
        return abs(self.predicted_s - self.measured_s) / self.measured_s * 100.0


@dataclass
class Group:
    """Operations sharing a kind, a layer or a step: total times and the spread of their errors."""

    name: str
    count: int
    predicted_s: float
    measured_s: float
    ratio: float | None
    median_error_pct: float
    p95_error_pct: float


@dataclass
class Comparison:
    plan_fingerprint: str
    model: str
    hardware: str
    device: str
    warmup_steps: int
    operations: int
    missing: int
    overall: Group
    by_kind: list[Group]
    by_layer: list[Group]
    by_step: list[Group]
    step_times: list[dict]
    step_error: dict
    ttft: dict
    lane_busy: dict[str, dict[str, float]]
    disagreements: list[dict]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else 0.0


def _group(name: str, pairs: list[OpPair]) -> Group:
    predicted = sum(p.predicted_s for p in pairs)
    measured = sum(p.measured_s for p in pairs)
    errors = [p.error_pct for p in pairs]
    return Group(
        name=name, count=len(pairs), predicted_s=predicted, measured_s=measured,
        ratio=measured / predicted if predicted > 0 else None,
        median_error_pct=float(statistics.median(errors)) if errors else 0.0,
        p95_error_pct=percentile(errors, 95),
    )


def pair_operations(graph: OpGraph, predicted: Trace, measured: Trace, serial: bool = False
                    ) -> tuple[list[OpPair], int]:
    """(operations present in both traces, in graph order; how many the measurement lacks)."""
    pred = durations(predicted, serial)
    meas = durations(measured, serial)
    pairs, missing = [], 0
    for op in graph.operations:
        m, p = meas.get(op.id), pred.get(op.id)
        if m is None or p is None:
            missing += 1
            continue
        pairs.append(OpPair(op.id, op.kind, op.lane, op.step, op.layer, p, m))
    return pairs, missing


def summary_from_records(plan: Plan, trace: Trace, which: str, notes: list[str]) -> TraceSummary:
    """The trace's TTFT and step times as its records give them (`advisor.tracesummary`), which is
    how the backend and the simulator made its summary; a summary its records do not support
    (an edited or cut trace) is named in `notes`, and the records' figures are used."""
    warmup = trace.summary.warmup_steps_excluded
    try:
        summary = summarise(plan, trace.records, warmup)
    except ValueError:
        raise UserError(f"the {which} trace lacks some steps' sample operations (the step boundaries): its TTFT "
                        "and step times cannot be taken from its records") from None
    stored = [trace.summary.ttft_s, *trace.summary.step_times_s]
    recomputed = [summary.ttft_s, *summary.step_times_s]
    if len(stored) != len(recomputed) or not np.allclose(stored, recomputed, rtol=1e-6, atol=1e-9):
        notes.append(f"the {which} trace's stored summary disagrees with its records (was it edited?): "
                     "TTFT and step times here come from the records")
    return summary


def step_name(step: int) -> str:
    return "prefill" if step == PREFILL else str(step)


def compare_traces(plan: Plan, measured: Trace, predicted: Trace | None = None,
                   graph: OpGraph | None = None) -> Comparison:
    """Predicted (simulated now if not given) against measured, for one plan."""
    graph = graph or build_graph(plan)
    if predicted is None:
        from simulator import simulate_plan

        predicted = simulate_plan(plan, graph)
    warmup = measured.summary.warmup_steps_excluded
    serial = not plan.hardware.concurrent_lanes
    pairs, missing = pair_operations(graph, predicted, measured, serial)
    if not pairs:
        raise UserError("the measured and predicted traces share no operation")
    notes: list[str] = []
    ps = summary_from_records(plan, predicted, "predicted", notes)
    ms = summary_from_records(plan, measured, "measured", notes)
    counted = [p for p in pairs if p.step == PREFILL or p.step >= warmup]

    kinds = defaultdict(list)
    layers = defaultdict(list)
    steps = defaultdict(list)
    for p in counted:
        kinds[p.kind].append(p)
        layers[p.layer].append(p)
    for p in pairs:
        steps[p.step].append(p)
    by_kind = [_group(kind, members) for kind, members in sorted(kinds.items(), key=lambda kv: -sum(
        p.measured_s for p in kv[1]))]
    num_layers = plan.model.num_layers
    by_layer = [_group("sample" if layer == num_layers else f"L{layer}", layers[layer]) for layer in sorted(layers)]
    by_step = [_group(step_name(step), steps[step]) for step in sorted(steps)]

    step_rows, step_errors = [], []
    for i, (pt, mt) in enumerate(zip(ps.step_times_s, ms.step_times_s)):
        error = abs(pt - mt) / mt * 100 if mt > 0 else 0.0
        step_rows.append({"step": i, "predicted_s": pt, "measured_s": mt, "ratio": mt / pt if pt > 0 else None,
                          "error_pct": error, "warmup": i < warmup})
        if i >= warmup:
            step_errors.append(error)
    counted_steps = [row for row in step_rows if not row["warmup"]]
    step_error = {"median_pct": float(statistics.median(step_errors)) if step_errors else None,
                  "p95_pct": percentile(step_errors, 95) if step_errors else None,
                  "steps": len(step_errors),
                  "predicted_mean_s": statistics.fmean(r["predicted_s"] for r in counted_steps) if counted_steps else None,
                  "measured_mean_s": statistics.fmean(r["measured_s"] for r in counted_steps) if counted_steps else None}
    ttft = {"predicted_s": ps.ttft_s, "measured_s": ms.ttft_s,
            "error_pct": abs(ps.ttft_s - ms.ttft_s) / ms.ttft_s * 100 if ms.ttft_s > 0 else None}
    lanes = sorted(set(ps.lane_busy) | set(ms.lane_busy), key=lambda lane: ("h2d", "gpu", "d2h", "cpu").index(lane)
                   if lane in ("h2d", "gpu", "d2h", "cpu") else 9)
    lane_busy = {lane: {"predicted": ps.lane_busy.get(lane, 0.0), "measured": ms.lane_busy.get(lane, 0.0)}
                 for lane in lanes}
    worst = sorted(counted, key=lambda p: -abs(p.measured_s - p.predicted_s))[:TOP_DISAGREEMENTS]
    disagreements = [{"id": p.id, "kind": p.kind, "predicted_s": p.predicted_s, "measured_s": p.measured_s,
                      "ratio": p.ratio, "error_pct": p.error_pct} for p in worst]
    if predicted.source == "measured":
        notes.append("the 'predicted' trace is a measured one: this compares two runs, not a prediction")
    elif predicted.device != plan.hardware.name:  # a simulated trace names the profile it was simulated on
        notes.append(f"the predicted trace was simulated on {predicted.device}, not on the plan's "
                     f"{plan.hardware.name}: its figures are that profile's")
    if missing:
        notes.append(f"{missing} operation(s) of the plan are missing from one of the traces")
    if warmup:
        warm = "decode step 0 is" if warmup == 1 else f"decode steps 0..{warmup - 1} are"
        notes.append(f"{warm} warm-up: left out of the per-operation statistics and the step means")
    if serial:
        notes.append("lanes do not overlap on this device: operations run one at a time, and each one's time "
                      "runs from the end of the one before it (the host's issue time counts)")
    return Comparison(
        plan_fingerprint=plan.fingerprint(), model=plan.model.name, hardware=plan.hardware.name,
        device=measured.device, warmup_steps=warmup, operations=len(pairs), missing=missing,
        overall=_group("all", counted), by_kind=by_kind, by_layer=by_layer, by_step=by_step,
        step_times=step_rows, step_error=step_error, ttft=ttft, lane_busy=lane_busy,
        disagreements=disagreements, notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def _t(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if abs(seconds) >= 1:
        return f"{seconds:.3f} s"
    if abs(seconds) >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _ratio(value: float | None) -> str:
    return f"{'n/a':>9s}" if value is None else f"{value:9.3f}"


def _table(title: str, groups: list[Group]) -> list[str]:
    lines = [title, f"  {'':12s} {'ops':>6s} {'predicted':>12s} {'measured':>12s} {'meas/pred':>9s} "
                    f"{'median err':>10s} {'p95 err':>9s}"]
    for g in groups:
        lines.append(f"  {g.name:12s} {g.count:6d} {_t(g.predicted_s):>12s} {_t(g.measured_s):>12s} "
                     f"{_ratio(g.ratio)} {_pct(g.median_error_pct):>10s} {_pct(g.p95_error_pct):>9s}")
    return lines


def describe(c: Comparison, max_steps: int = 12) -> list[str]:
    o = c.overall
    lines = [
        f"plan {c.plan_fingerprint}: {c.model} on {c.hardware}; measured on {c.device}; "
        f"{c.operations} operations joined",
        f"per operation: median error {_pct(o.median_error_pct)}, p95 {_pct(o.p95_error_pct)}; "
        f"total measured / predicted {_ratio(o.ratio).strip()}",
        f"TTFT: predicted {_t(c.ttft['predicted_s'])}, measured {_t(c.ttft['measured_s'])} "
        f"({_pct(c.ttft['error_pct'])})",
    ]
    if c.step_times:
        lines.append(f"decode step: predicted {_t(c.step_error['predicted_mean_s'])}, measured "
                     f"{_t(c.step_error['measured_mean_s'])} (means); per step median error "
                     f"{_pct(c.step_error['median_pct'])}, p95 {_pct(c.step_error['p95_pct'])} over "
                     f"{c.step_error['steps']} steps")
    lines.append("")
    lines += _table("by kind", c.by_kind)
    lines.append("")
    lines += _table("by layer", c.by_layer)
    lines.append("")
    lines += _table("by step (operation times summed)", c.by_step[: max_steps + 1])
    if len(c.by_step) > max_steps + 1:
        lines.append(f"  … {len(c.by_step) - max_steps - 1} more steps (--json has all)")
    if c.step_times:
        lines.append("")
        lines.append(f"decode step times  {'predicted':>12s} {'measured':>12s} {'meas/pred':>9s} {'error':>8s}")
        for row in c.step_times[:max_steps]:
            mark = "  (warm-up)" if row["warmup"] else ""
            ratio = _ratio(row["ratio"])
            lines.append(f"  step {row['step']:<12d} {_t(row['predicted_s']):>12s} {_t(row['measured_s']):>12s} "
                         f"{ratio} {_pct(row['error_pct']):>8s}{mark}")
    lines.append("")
    busy = "  ".join(f"{lane} {100 * v['predicted']:.1f}% / {100 * v['measured']:.1f}%"
                     for lane, v in c.lane_busy.items())
    lines.append(f"lanes busy (predicted / measured): {busy}")
    lines.append("largest disagreements:")
    for d in c.disagreements:
        lines.append(f"  {d['id']:28s} predicted {_t(d['predicted_s']):>10s}, measured {_t(d['measured_s']):>10s} "
                     f"(measured/predicted {_ratio(d['ratio']).strip()})")
    lines += [f"note: {note}" for note in c.notes]
    return lines


def default_chrome_path(measured_path: str) -> Path:
    path = Path(measured_path)
    return path.with_name(path.name.removesuffix(".json") + ".compare.chrome.json")


def cmd_compare(args) -> int:
    chrome = Path(args.chrome) if getattr(args, "chrome", None) else default_chrome_path(args.measured)
    check_distinct({"the plan": args.plan, "the measured trace": args.measured, "--predicted": args.predicted},
                   {"--chrome": chrome})
    if getattr(args, "chrome", None):
        check_writable(args.chrome)  # one asked for by name must be written; the default is a convenience
    plan = load_document(Plan, args.plan)
    measured = load_document(Trace, args.measured)
    graph = check_trace(plan, measured, args.measured, plan_where=args.plan)
    check_device(plan.hardware, measured, args.measured)
    predicted = None
    if args.predicted:
        predicted = load_document(Trace, args.predicted)
        check_trace(plan, predicted, args.predicted, graph, plan_where=args.plan)
    if predicted is None:
        from simulator import simulate_plan

        predicted = simulate_plan(plan, graph)
    comparison = compare_traces(plan, measured, predicted, graph)
    from advisor.chrome import write_chrome

    try:
        write_chrome(chrome, {"predicted": predicted, "measured": measured}, graph)
    except OSError as error:
        if getattr(args, "chrome", None):
            raise UserError(f"{chrome}: cannot write: {error.strerror or error}") from None
        comparison.notes.append(f"could not write the Chrome trace {chrome}: {error.strerror or error}")
        chrome = None
    if args.json:
        data = comparison.as_dict()
        data["chrome_trace"] = str(chrome) if chrome else None
        print(json.dumps(data, indent=1))
    else:
        for line in describe(comparison):
            print(line)
        if chrome:
            print(f"wrote {chrome} (both timelines; open in https://ui.perfetto.dev)")
    return 0
