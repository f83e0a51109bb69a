"""Benchmark: `advisor plan` solve time and cost-model throughput (issue: core).

Targets: solve ≤ 50 ms median; the cost model ≥ 10,000 configurations per second.
Method: wall clock (time.perf_counter) around `scheduler.plan(...)`, median of N runs after one
warm-up; the cost model is timed on a sweep over every split of the workload (one configuration =
one split costed over all decode steps). Run: `python bench/bench_plan.py`.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from advisor.catalog import load_hardware, load_model  # noqa: E402
from advisor.costs import Setup, sweep  # noqa: E402
from advisor.documents import Workload  # noqa: E402
from advisor.scheduler import Request, plan  # noqa: E402

CASES = [
    ("opt-6.7b, batch 8, prompt 2000, gen 48, budget 0", "opt-6.7b", 8, 2000, 48, "row"),
    ("opt-6.7b, batch 8, prompt 1900, gen 129, budget 0", "opt-6.7b", 8, 1900, 129, "row"),
    ("opt-6.7b-8k, batch 32, prompt 4096, gen 128", "opt-6.7b-8k", 32, 4096, 128, "row"),
    ("opt-30b, batch 64, prompt 1024, gen 32, column", "opt-30b", 64, 1024, 32, "column"),
]


def time_plan(model, batch, prompt, gen, schedule, runs=15):
    hw = load_hardware("h100-pcie5")
    budget = 0 if "8k" not in model.name else None
    request = Request(model, hw, batch, prompt, gen, schedule=schedule, gpu_kv_budget_bytes=budget)
    plan(request)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = plan(request)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    lines = [f"bench_plan {datetime.date.today()} on {platform.node()} ({platform.processor() or platform.machine()}), "
             "wall clock, median of 15 after a warm-up"]
    lines.append(f"{'case':52s} {'solve median':>13s} {'splits':>14s} {'speedup':>8s}")
    for label, name, batch, prompt, gen, schedule in CASES:
        median, result = time_plan(load_model(name), batch, prompt, gen, schedule)
        splits = f"{result.splits[0]}..{result.splits[-1]}"
        speedup = result.predicted.speedup_vs_full_transfer
        lines.append(f"{label:52s} {median * 1e3:10.1f} ms {splits:>14s} {speedup or 1:8.3f}")

    model, hw = load_model("opt-6.7b-8k"), load_hardware("h100-pcie5")
    setup = Setup(model, hw, Workload(batch=32, prompt_len=4096, gen_len=128), 2, "row", 4, 32, 0)
    splits = np.arange(4097)
    sweep(setup, splits)
    runs = []
    for _ in range(7):
        start = time.perf_counter()
        sweep(setup, splits)
        runs.append(time.perf_counter() - start)
    rate = len(splits) / statistics.median(runs)
    lines.append(f"cost model: {len(splits)} splits × 127 decode steps in {statistics.median(runs) * 1e3:.1f} ms "
                 f"→ {rate:,.0f} configurations/s (target ≥ 10,000)")
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).resolve().parent / "results" / f"plan-{datetime.date.today()}.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
