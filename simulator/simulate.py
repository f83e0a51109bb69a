"""Operation graph → predicted trace: validate the graph, time each operation, run the lanes in SimPy.

The simulator keeps no idea of its own of what a plan means: it takes the operations
`advisor.opgraph.build_graph` issues, asks `advisor.timemodel.op_duration` how long each takes
alone, and lets `simulator.lanes` play them out on the profile's lanes, in issue order and
respecting every dependency. What the averaged cost model cannot see falls out of that run:
pipeline fill and drain at step boundaries, the GPU waiting for a late transfer, double buffers
holding back a load, copies slowed while both PCIe directions are busy. The predicted `Trace`
uses the graph's operation ids, so `advisor compare` can hold it against a measured one; its
summary comes from `advisor.tracesummary`, the same code that summarises measurements.

Bad input is a `UserError` of one line: an unknown or duplicate operation id, a lane that does
not exist, a dependency cycle or a lane-order deadlock (naming an operation that never ran), or a
profile without the GEMM curves the graph needs.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import simpy
from pydantic import TypeAdapter

from advisor.documents import HardwareProfile, Plan, Trace, TraceRecord
from advisor.errors import UserError
from advisor.opgraph import OpGraph, build_graph
from advisor.plans import make_plan
from advisor.timemodel import direction, op_duration
from advisor.tracesummary import summarise
from simulator.lanes import CopyRates, Machine

LANES = ("h2d", "d2h", "gpu", "cpu")
COPY_LANES = ("h2d", "d2h")
_RECORDS = TypeAdapter(list[TraceRecord])


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while tens of thousands of small objects are made.

    A decode run allocates an operation, an event or a record per operation and frees nothing,
    so the collector's full passes find nothing to free and cost more than the simulation.
    Simulations may run in several threads at once (the TUI's workers): the last one to finish
    restores the collector, counted under a lock.
    """
    global _paused_runs, _collector_was_enabled
    with _pause_lock:
        if _paused_runs == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _paused_runs += 1
    try:
        yield
    finally:
        with _pause_lock:
            _paused_runs -= 1
            if _paused_runs == 0 and _collector_was_enabled:
                gc.enable()


_pause_lock = threading.Lock()
_paused_runs = 0
_collector_was_enabled = True


def copy_rates(hw: HardwareProfile) -> tuple[CopyRates, CopyRates] | None:
    """(h2d, d2h) rates under bidirectional sharing, or None where sharing changes nothing."""
    total = hw.bidirectional_total_Bps
    if total is None or not hw.concurrent_lanes:
        return None
    rates = tuple(CopyRates(own_Bps=m.bandwidth_Bps, shared_Bps=min(m.bandwidth_Bps, total / 2))
                  for m in (hw.h2d, hw.d2h))
    if all(r.shared_Bps == r.own_Bps for r in rates):
        return None
    return rates  # type: ignore[return-value]


class Prepared:
    """A validated graph as the lanes need it: dependency indices, durations, lane orders."""

    __slots__ = ("ids", "lanes", "deps", "durations", "nbytes", "latency", "orders")

    def __init__(self, graph: OpGraph, hw: HardwareProfile, cache: dict | None = None):
        ops = graph.operations
        index: dict[str, int] = {}
        for i, op in enumerate(ops):
            if op.id in index:
                raise UserError(f"operation graph: operation {op.id} appears twice")
            if op.lane not in LANES:
                raise UserError(f"operation graph: {op.id}: unknown lane {op.lane!r} (lanes: {', '.join(LANES)})")
            index[op.id] = i
        deps: list[list[int]] = []
        for op in ops:
            try:
                deps.append([index[d] for d in op.deps])
            except KeyError as missing:
                raise UserError(
                    f"operation graph: {op.id} depends on {missing.args[0]}, which is not in the graph"
                ) from None
        if not hw.gemm:
            needy = next((op for op in ops if op.gemms), None)
            if needy is not None:
                raise UserError(
                    f"hardware profile {hw.name}: gemm: no GEMM rate curve, needed by {needy.id} "
                    f"(shape N={needy.gemms[0][1]}, K={needy.gemms[0][2]})"
                )
        self.ids = [op.id for op in ops]
        self.lanes = [op.lane for op in ops]
        self.deps = deps
        self.durations = durations(graph, hw, cache)
        self.nbytes = [op.bytes if op.lane in COPY_LANES else 0 for op in ops]
        latency = {lane: direction(hw, lane).latency_s for lane in COPY_LANES}
        self.latency = [latency[op.lane] if op.lane in COPY_LANES and op.bytes > 0 else 0.0 for op in ops]
        if hw.concurrent_lanes:
            orders: dict[str, list[int]] = {f"lane {lane}": [] for lane in LANES}
            for i, lane in enumerate(self.lanes):
                orders[f"lane {lane}"].append(i)
            self.orders = {label: order for label, order in orders.items() if order}
        else:
            self.orders = {"the graph order (this profile's lanes do not overlap)": list(range(len(ops)))}


def durations(graph: OpGraph, hw: HardwareProfile, cache: dict | None = None) -> list[float]:
    """Seconds each operation takes alone on its lane, from `advisor.timemodel.op_duration`.

    Operations of the same size take the same time, so each distinct size is timed once; `cache`
    carries those times across graphs on the same profile.
    """
    cache = {} if cache is None else cache
    p = graph.dtype_bytes
    out = []
    append = out.append
    for op in graph.operations:
        if op.lane in COPY_LANES:
            key = (op.lane, op.bytes)
        else:
            key = (op.lane, op.kind, op.bytes, op.kernels, tuple(op.gemms), p)
        seconds = cache.get(key)
        if seconds is None:
            seconds = cache[key] = float(op_duration(hw, op, p))
        append(seconds)
    return out


def run(prepared: Prepared, hw: HardwareProfile) -> tuple[list[float], list[float]]:
    """Start and end seconds of every operation, in graph order."""
    env = simpy.Environment()
    machine = Machine(env, prepared.deps, prepared.durations)
    rates = copy_rates(hw)
    for label, order in prepared.orders.items():
        lane = label.removeprefix("lane ")
        if rates is not None and lane in COPY_LANES:
            me = COPY_LANES.index(lane)
            proc = env.process(machine.shared_copy_lane(order, me, prepared.nbytes, prepared.latency, rates))
            machine.copy_procs[me] = proc
        else:
            env.process(machine.fixed_lane(order))
    env.run()
    stuck = machine.deadlock(prepared.orders, prepared.ids)
    if stuck is not None:
        raise UserError(f"operation graph: {stuck}")
    return machine.start, machine.end  # type: ignore[return-value]


def simulate_graph(graph: OpGraph, hw: HardwareProfile, *, cache: dict | None = None) -> list[TraceRecord]:
    """The predicted start and end of every operation of `graph` on `hw`, in graph order."""
    with _collector_paused():
        prepared = Prepared(graph, hw, cache)
        start, end = run(prepared, hw)
        return _RECORDS.validate_python([
            {"id": op_id, "lane": lane, "start_s": s, "end_s": e}
            for op_id, lane, s, e in zip(prepared.ids, prepared.lanes, start, end)
        ])


def simulate_plan(plan: Plan, graph: OpGraph | None = None, *, cache: dict | None = None) -> Trace:
    """The predicted trace of `plan` on its own hardware profile."""
    hw = plan.hardware
    with _collector_paused():
        graph = build_graph(plan) if graph is None else graph
        records = simulate_graph(graph, hw, cache=cache)
        summary = summarise(plan, records)
    notes = []
    if not hw.concurrent_lanes:
        notes.append("lanes do not overlap on this profile: operations ran one at a time in graph order")
    elif copy_rates(hw) is not None:
        notes.append(f"copies in both directions share {hw.bidirectional_total_Bps / 1e9:.1f} GB/s")
    return Trace(
        source="simulated",
        plan_fingerprint=plan.fingerprint(),
        device=hw.name,
        records=records,
        summary=summary,
        extra={"operations": len(records)},
        notes=notes,
    )


def simulate_many(plans: Iterable[Plan]) -> list[Trace]:
    """Predicted traces of many plans (every split of a workload, say), sharing operation timings."""
    caches: dict[str, dict] = {}
    traces = []
    for plan in plans:
        key = plan.hardware.model_dump_json()
        traces.append(simulate_plan(plan, cache=caches.setdefault(key, {})))
    return traces


def with_split(plan: Plan, split: int) -> Plan:
    """`plan` with one split for every decode step (clamped to each step's context), all else kept."""
    return make_plan(
        plan.model, plan.hardware, plan.workload, splits=split, chunks=plan.chunks, schedule=plan.schedule,
        objective=plan.objective, dtype=plan.dtype, weights_gpu_layers=plan.weights_gpu_layers,
        resident_kv_layers=plan.resident_kv_layers, offload=plan.offload, cost_model=plan.cost_model,
    )


def simulate_splits(plan: Plan, splits: Iterable[int]) -> list[Trace]:
    """Predicted traces of `plan` with each of `splits` in turn (a sweep over the split)."""
    return simulate_many(with_split(plan, split) for split in splits)
