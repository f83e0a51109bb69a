"""Traces as Chrome trace-event JSON, to open in Perfetto (ui.perfetto.dev) or chrome://tracing.

Any number of traces go into one file, each as its own process (track group) named after its key
("predicted", "measured", ...), each lane as a thread of it, so a simulated and a measured run of
the same plan lie one above the other on the same time axis. Each trace starts at time 0: a
measured trace's clock origin is arbitrary. With the operation graph at hand, every slice also
carries its operation's step, layer, batch, chunk, bytes and GFLOP.
"""

from __future__ import annotations

import json
import os

from advisor.documents import Trace, write_text_atomic

LANE_ORDER = ("h2d", "gpu", "d2h", "cpu")
LANE_TITLES = {"h2d": "PCIe host→device", "d2h": "PCIe device→host", "gpu": "GPU compute", "cpu": "host CPU"}


def chrome_events(traces: dict[str, Trace], graph=None) -> list[dict]:
    """The trace events of `traces`, one process per trace and one thread per lane."""
    ops = graph.by_id() if graph is not None else {}
    events: list[dict] = []
    for pid, (name, trace) in enumerate(traces.items(), start=1):
        events.append({"ph": "M", "pid": pid, "name": "process_name",
                       "args": {"name": f"{name} ({trace.source}, {trace.device})"}})
        events.append({"ph": "M", "pid": pid, "name": "process_sort_index", "args": {"sort_index": pid}})
        lanes = [lane for lane in LANE_ORDER if any(r.lane == lane for r in trace.records)]
        tid_of = {lane: tid for tid, lane in enumerate(lanes, start=1)}
        for lane, tid in tid_of.items():
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                           "args": {"name": LANE_TITLES[lane]}})
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
                           "args": {"sort_index": tid}})
        origin = min((r.start_s for r in trace.records), default=0.0)
        for r in trace.records:
            parts = r.id.split(".")
            args: dict[str, object] = {"id": r.id}
            op = ops.get(r.id)
            if op is not None:
                args.update(step=op.step, layer=op.layer, batch=op.batch)
                if op.chunk is not None:
                    args["chunk"] = op.chunk
                if op.bytes:
                    args["bytes"] = op.bytes
                if op.gemms:
                    args["gflop"] = round(op.flops / 1e9, 6)
            events.append({
                "ph": "X", "pid": pid, "tid": tid_of[r.lane],
                "name": parts[3] if len(parts) > 3 else r.id,
                "cat": f"step {parts[0][1:]}" if parts else "",
                "ts": (r.start_s - origin) * 1e6,
                "dur": max(r.end_s - r.start_s, 0.0) * 1e6,
                "args": args,
            })
    return events


def write_chrome(path: str | os.PathLike, traces: dict[str, Trace], graph=None) -> None:
    """Write `traces` (name → trace) as one Chrome trace file, atomically."""
    document = {
        "traceEvents": chrome_events(traces, graph),
        "displayTimeUnit": "ms",
        "otherData": {name: f"{t.source} trace of plan {t.plan_fingerprint} on {t.device}"
                      for name, t in traces.items()},
    }
    write_text_atomic(path, json.dumps(document, separators=(",", ":")))
