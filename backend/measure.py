"""Figures of a measured run that the trace summary does not give: copy bandwidth, timing overhead.

- Copy bandwidth: bytes the copies of some kinds really moved, over the time they took (sum of
  their event-timed durations), counting only steps after the warm-up.
- Timing overhead: the same decode steps are issued again (which is idempotent: they read what
  prefill stored and store the same values again), with every operation timed and, back to back,
  with only the step boundaries timed; the overhead is how much longer a step takes in the first.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

from backend.executor import Executor, RunResult, decode_step_times
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


def timing_overhead(executor: Executor, steps: Sequence[int], repeats: int = 3,
                    on_pair: Callable[[int, int], None] | None = None) -> dict[str, float] | None:
    """What timing every operation costs a decode step: timed / reference step time − 1.

    The decode steps `steps` (consecutive, at least two) are run again in pairs of runs back to
    back, which one first alternating: one with every operation timed, and a reference that times
    only the step boundaries (the `sample` operations, whose ends define a step: DESIGN §3), one
    event pair per step and GPU batch. Each run's first step is left out, because it carries the
    run's head (the first layer's loads with no work before them to hide behind), which a decode
    step inside a run does not have. The overhead is the median over the pairs of the ratio of
    their median step times. Pairs close in time see the same PCIe rate, which on a shared host
    drifts by 10-45% over hundreds of milliseconds.

    Beside it, from the same pairs: the first step's time in each kind of run (`*_head_s`, from the
    run's origin to the first step's sample), `run_overhead`, the ratio of whole-run wall times
    (head, tail and the final synchronisation included), and `device_overhead`, the same on the
    GPU's clock; a difference between these and `overhead` says where a cost sits. `on_pair(done,
    repeats)` is called after each pair (progress).
    """
    steps = sorted(steps)
    if len(steps) < 2 or steps != list(range(steps[0], steps[0] + len(steps))):
        return None
    device, plan = executor.rt.device, executor.plan
    boundaries = frozenset(op.id for op in executor.ops if op.kind == "sample" and op.step in steps)
    timed_steps, reference_steps, ratios, run_ratios, span_ratios = [], [], [], [], []
    heads: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeats):
        runs = {}
        for timing in ((True, boundaries) if i % 2 == 0 else (boundaries, True)):
            runs[timing is True] = executor.run(make_lanes(device, timing=timing), steps=steps)
        if on_pair:
            on_pair(i + 1, repeats)
        per_step = {}
        for full, run in runs.items():
            times = decode_step_times(plan, run.times, steps)
            per_step[full] = [times[s] for s in steps[1:] if s in times]
            if steps[0] in times:  # the first step: the run's head, on the same clock
                heads[full].append(times[steps[0]])
        if not per_step[True] or not per_step[False]:
            continue
        timed, reference = statistics.median(per_step[True]), statistics.median(per_step[False])
        timed_steps.append(timed)
        reference_steps.append(reference)
        if reference > 0:
            ratios.append(timed / reference)
        if runs[False].wall_s > 0:
            run_ratios.append(runs[True].wall_s / runs[False].wall_s)
        if runs[False].span_s and runs[True].span_s:
            span_ratios.append(runs[True].span_s / runs[False].span_s)
    if not ratios:
        return None
    return {
        "timed_step_s": statistics.median(timed_steps),
        "reference_step_s": statistics.median(reference_steps),
        "overhead": statistics.median(ratios) - 1.0,
        "run_overhead": statistics.median(run_ratios) - 1.0 if run_ratios else None,
        "device_overhead": statistics.median(span_ratios) - 1.0 if span_ratios else None,
        "timed_head_s": statistics.median(heads[True]) if heads[True] else None,
        "reference_head_s": statistics.median(heads[False]) if heads[False] else None,
        "pairs": len(ratios),
        "steps_per_run": len(steps),
    }
