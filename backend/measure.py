"""Figures of a measured run that the trace summary does not give: copy bandwidth, timing overhead.

- Copy bandwidth: bytes the copies of some kinds really moved, over the time they took (sum of
  their event-timed durations), counting only steps after the warm-up.
- Timing overhead: the same decode steps are issued again (which is idempotent: they read what
  prefill stored and store the same values again) with timing events off and on, alternately; the
  overhead is the best timed wall time over the best untimed one, minus one.
"""

from __future__ import annotations

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
    """Wall time of `steps` with and without timing events, and the relative overhead."""
    steps = list(steps)
    if not steps:
        return None
    device = executor.rt.device
    timed, untimed = [], []
    for i in range(repeats):
        # alternate which goes first, so that a drift over the repeats favours neither
        for timing in ((False, True) if i % 2 == 0 else (True, False)):
            wall = executor.run(make_lanes(device, timing=timing), steps=steps).wall_s
            (timed if timing else untimed).append(wall)
    best_timed, best_untimed = min(timed), min(untimed)
    return {
        "timed_step_s": best_timed / len(steps),
        "untimed_step_s": best_untimed / len(steps),
        "overhead": best_timed / best_untimed - 1.0 if best_untimed > 0 else 0.0,
        "repeats": repeats,
    }
