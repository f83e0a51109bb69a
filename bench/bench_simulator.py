"""Benchmark: the SimPy simulator's speed (issue: simulator).

Targets (on the 2-core development machine): ≥ 100,000 simulated operations per second; a full
OPT-6.7B plan (32 layers, 128 decode steps) ≤ 1 s; one decode step ≤ 20 ms.
Method: wall clock (time.perf_counter), median of N runs after one warm-up run.
- operations/s: `simulate_graph(graph, hw)` on the full plan's prebuilt graph (validation, timing of
  each operation, the SimPy run, the trace records), divided into the graph's operation count;
- full plan: `simulate_plan(plan)` end to end (graph building, simulation, summary);
- one decode step: `simulate_plan` of the same workload with gen_len 2 (prefill and one decode
  step, so it also counts the prefill's operations).
Workload: opt-6.7b on h100-pcie5, batch 8, prompt 1024, gen 129 (128 decode steps), the whole KV
cache offloaded, 4 activation chunks. Run: `python bench/bench_simulator.py`.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from advisor.catalog import load_hardware, load_model  # noqa: E402
from advisor.documents import Workload  # noqa: E402
from advisor.opgraph import build_graph  # noqa: E402
from advisor.plans import make_plan  # noqa: E402
from simulator import simulate_graph, simulate_plan  # noqa: E402

RUNS = 7


def median_time(fn, runs=RUNS):
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def opt_plan(split, gen=129, schedule="row", gpu_batches=1, batch=8, weights=None, hw="h100-pcie5"):
    wl = Workload(batch=batch, prompt_len=1024, gen_len=gen, gpu_batches=gpu_batches)
    return make_plan(load_model("opt-6.7b"), load_hardware(hw), wl, splits=split, chunks=4,
                     resident_kv_layers=0, schedule=schedule, weights_gpu_layers=weights)


CASES = [
    # label, plan
    ("row, split 700 (recompute 68%), weights on GPU", lambda: opt_plan(700)),
    ("row, split 0 (full KV transfer), weights on GPU", lambda: opt_plan(0)),
    ("column, 4 GPU batches of 8, split 700, weights streamed", lambda: opt_plan(700, gpu_batches=4, batch=32,
                                                                               schedule="column", weights=0)),
    ("cpu-generic (lanes in one order), split 700", lambda: opt_plan(700, hw="cpu-generic")),
]


def main() -> None:
    lines = [f"bench_simulator {datetime.date.today()} on {platform.node()} "
             f"({platform.processor() or platform.machine()}, Python {platform.python_version()}), "
             f"wall clock, median of {RUNS} after a warm-up",
             "workload: opt-6.7b, batch 8, prompt 1024, gen 129 (128 decode steps), whole KV offloaded, 4 chunks",
             "",
             f"{'case':58s} {'ops':>7s} {'simulate_graph':>15s} {'ops/s':>10s} {'simulate_plan':>14s} "
             f"{'1 step plan':>12s} {'sim step':>9s}"]
    headline = {}
    for label, make in CASES:
        plan = make()
        graph = build_graph(plan)
        hw = plan.hardware
        n = len(graph.operations)
        t_graph = median_time(lambda: simulate_graph(graph, hw))
        t_plan = median_time(lambda: simulate_plan(plan))
        one = make_plan(plan.model, hw, plan.workload.model_copy(update={"gen_len": 2}),
                        splits=plan.splits[0], chunks=plan.chunks, resident_kv_layers=0,
                        schedule=plan.schedule, weights_gpu_layers=plan.weights_gpu_layers)
        t_one = median_time(lambda: simulate_plan(one))
        step = simulate_plan(plan).summary.decode_step_s
        lines.append(f"{label:58s} {n:7d} {t_graph * 1e3:12.1f} ms {n / t_graph:10,.0f} {t_plan * 1e3:11.1f} ms "
                     f"{t_one * 1e3:9.2f} ms {step * 1e3:6.2f} ms")
        headline.setdefault("ops", (n / t_graph, label))
        headline.setdefault("plan", (t_plan, label))
        headline.setdefault("one", (t_one, label))
    lines += [
        "",
        "columns: simulate_graph = graph → records (validation, timing, SimPy run); simulate_plan = plan → trace "
        "end to end (graph, simulation, summary); 1 step plan = simulate_plan with gen_len 2 (prefill + 1 "
        "decode step); sim step = the simulated mean decode step",
        f"operations/s       {headline['ops'][0]:10,.0f}   (target ≥ 100,000)",
        f"full plan          {headline['plan'][0] * 1e3:10.1f} ms (target ≤ 1 s; 32 layers, 128 decode steps)",
        f"one decode step    {headline['one'][0] * 1e3:10.2f} ms (target ≤ 20 ms; prefill included)",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).resolve().parent / "results" / f"simulator-{datetime.date.today()}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
