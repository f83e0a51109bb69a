"""Figures of a trace, the same way whether it was simulated or measured.

TTFT is the end of prefill's last `sample`. A decode step's time runs from the end of the previous
step's `sample` to the end of its own (the latest over GPU batches in the column schedule; summed
over GPU batches in the row schedule, where batches run one after the other). Tokens per second
count every sequence of the workload. Lane figures: busy fraction over the whole trace, and the
longest idle gap between two operations of the lane.
"""

from __future__ import annotations

from collections import defaultdict

from advisor.documents import Plan, TraceRecord, TraceSummary
from advisor.opgraph import PREFILL, parse_op_id


def lane_figures(records: list[TraceRecord]) -> tuple[dict[str, float], dict[str, float]]:
    """(busy fraction, longest idle gap in seconds) per lane."""
    if not records:
        return {}, {}
    start = min(r.start_s for r in records)
    end = max(r.end_s for r in records)
    span = max(end - start, 1e-30)
    by_lane: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        by_lane[r.lane].append((r.start_s, r.end_s))
    busy, gaps = {}, {}
    for lane, intervals in by_lane.items():
        intervals.sort()
        total, longest = 0.0, 0.0
        cur_start, cur_end = intervals[0]
        for s, e in intervals[1:]:
            if s > cur_end:
                total += cur_end - cur_start
                longest = max(longest, s - cur_end)
                cur_start, cur_end = s, e
            else:
                cur_end = max(cur_end, e)
        total += cur_end - cur_start
        busy[lane] = total / span
        gaps[lane] = longest
    return busy, gaps


def summarise(plan: Plan, records: list[TraceRecord], warmup_steps: int = 0) -> TraceSummary:
    """TTFT, per-step decode times and lane figures of a trace of `plan`'s operations."""
    sample_end: dict[tuple[int, int], float] = {}
    for r in records:
        if r.id.endswith(".sample"):
            step, _, batch, _, _ = parse_op_id(r.id)
            sample_end[(step, batch)] = r.end_s
    batches = range(plan.workload.gpu_batches)
    steps = plan.workload.decode_steps
    origin = min((r.start_s for r in records), default=0.0)
    column = plan.schedule == "column"

    def step_time(step: int) -> float:
        prev = PREFILL if step == 0 else step - 1
        if column:
            return max(sample_end[(step, b)] for b in batches) - max(sample_end[(prev, b)] for b in batches)
        return sum(sample_end[(step, b)] - sample_end[(prev, b)] for b in batches)

    have_all = all((s, b) in sample_end for s in [PREFILL, *range(steps)] for b in batches)
    if not have_all:
        raise ValueError("trace lacks some sample operations")
    if column:
        ttft = max(sample_end[(PREFILL, b)] for b in batches) - origin
    else:
        ttft = sample_end[(PREFILL, 0)] - origin
    step_times = [step_time(step) for step in range(steps)]
    counted = step_times[warmup_steps:]
    decode = sum(counted) / len(counted) if counted else 0.0
    # every sequence of the workload makes one token per step (in the row schedule the step
    # time already sums the GPU batches, which run one after the other)
    tokens_per_s = plan.workload.batch / decode if decode > 0 else 0.0
    busy, gaps = lane_figures(records)
    return TraceSummary(
        ttft_s=ttft,
        step_times_s=step_times,
        decode_step_s=decode,
        decode_tokens_per_s=tokens_per_s,
        lane_busy=busy,
        longest_gpu_idle_s=gaps.get("gpu", 0.0),
        longest_h2d_idle_s=gaps.get("h2d", 0.0),
        warmup_steps_excluded=warmup_steps,
    )
