"""Figures of a measured run that the trace summary does not give: copy bandwidth, timing overhead.

- Copy bandwidth: bytes the copies of some kinds really moved, over the time they took (sum of
  their event-timed durations), counting only steps after the warm-up.
- Timing overhead: the same decode steps are issued again (which is idempotent: they read what
  prefill stored and store the same values again) one at a time, with timing events off and on
  back to back; the overhead is the median over these pairs of timed / untimed, minus one.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from backend.executor import Executor, RunResult
from backend.lanes import make_lanes


def default_warmup(device: torch.device, decode_steps: int) -> int:
    """Steps left out of the figures: the first (cold caches, allocator growth) when there are enough."""
    if decode_steps >= 6 and device.type == "cuda":
        return 2
    return 1 if decode_steps >= 2 else 0


def copy_rate_Bps(result: RunResult, kinds: Sequence[str], min_step: int = 0) -> float | None:
    moved, seconds = 0, 0.0
    for op in result.ops:
        if op.kind in kinds and op.step >= min_step and op.id in result.times and op.id in result.moved_bytes:
            start, end = result.times[op.id]
            moved += result.moved_bytes[op.id]
            seconds += end - start
    return moved / seconds if seconds > 0 else None


def timing_overhead(executor: Executor, steps: Sequence[int], repeats: int = 2) -> dict[str, float] | None:
    """Wall time of decode steps with and without timing events, and the relative overhead.

    Each step is run on its own, untimed and timed back to back (which one first alternates), and
    the overhead is the median over these pairs of timed / untimed − 1. Pairs close in time see
    the same PCIe rate, which on a shared host drifts by 10-45% over hundreds of milliseconds:
    comparing the best of longer runs could not resolve a few percent there.
    """
    steps = list(steps)
    if not steps:
        return None
    device = executor.rt.device
    timed, untimed, ratios, span_ratios = [], [], [], []
    for i in range(repeats):
        for n, step in enumerate(steps):
            runs = {}
            for timing in ((False, True) if (i + n) % 2 == 0 else (True, False)):
                runs[timing] = executor.run(make_lanes(device, timing=timing), steps=[step])
            timed.append(runs[True].wall_s)
            untimed.append(runs[False].wall_s)
            if runs[False].wall_s > 0:
                ratios.append(runs[True].wall_s / runs[False].wall_s)
            if runs[False].span_s and runs[True].span_s:
                span_ratios.append(runs[True].span_s / runs[False].span_s)
    return {
        "timed_step_s": statistics.median(timed),
        "untimed_step_s": statistics.median(untimed),
        "overhead": statistics.median(ratios) - 1.0 if ratios else 0.0,
        # the same pairs on the device's clock (origin to the last lane's end): a difference from
        # `overhead` locates the cost on the host (issue, synchronisation) rather than the device
        "device_overhead": statistics.median(span_ratios) - 1.0 if span_ratios else None,
        "pairs": len(ratios),
    }
