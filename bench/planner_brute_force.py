"""Check: the planner's choices against every forced choice, on 39 random workloads.

The planner does not try every discrete choice: it screens GPU batch counts and weight placements
with the cost model at constant splits, walks the placement from the best of them, picks the chunk
count for the winner and solves the MILP for that one alone. This check keeps the screening honest.
For each workload it forces, one plan at a time, every GPU batch count that divides the batch,
every weight placement (0 to all layers on the GPU) and every chunk count (1, 2, 4, 8), and reports
the gap: the planner's figure over the best forced plan's, less 1. The figure is the mean decode
step, or the time until every sequence has its first token where only one token is generated.
Forced plans are solved in the order of a cost-model lower bound on their figure, while that bound
could beat the best found so far and the planner's by more than 0.5%: a gap above 0.5% is exact,
one below it says that no choice beats the planner by more.

It also brute-forces the splits at the planner's own choices: per re-planning segment, the split
(up to the segment's first context) of least summed cost, the store sized per step and host memory
not checked. The split gap is the planner's figure over that one's, less 1.

The workloads were drawn at random over the shipped models and hardware (review of 2026-11-27):
25 with batch 1-256, prompt 64-8192 and 2-512 new tokens log-uniform, row or column, latency or
throughput, a GPU KV budget of none, 0, 2 or 8 GB, at most 3 of them without offloading; then 14
with prompts of 1024 tokens or more, all offloading. Run: `python bench/planner_brute_force.py`
(about 45 s on a 2-core VM; `--quick`: the first 8 workloads, no results file); results go to
bench/results/planner-brute-force-<date>.txt.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from advisor import scheduler  # noqa: E402
from advisor.catalog import load_hardware, load_model  # noqa: E402
from advisor.costs import Setup, all_first_tokens, combine, layer_times, step_times  # noqa: E402
from advisor.documents import DTYPE_BYTES, Plan  # noqa: E402
from advisor.errors import UserError  # noqa: E402
from advisor.scheduler import Request, plan, segments_of  # noqa: E402

TOLERANCE = 0.005
BOUND_BLOCKS = 12  # the lower bound costs the decode steps in this many blocks
QUICK = 8

# (model, hardware, batch, prompt, new tokens, schedule, objective, GPU KV budget in GB or None)
WORKLOADS = [
    ("opt-30b", "rtx-a6000-pcie4", 20, 82, 74, "row", "latency", 0),
    ("opt-1.3b", "rtx-a6000-pcie4", 11, 88, 3, "row", "latency", 8),
    ("llama-2-70b", "a100-40gb-pcie4", 224, 332, 49, "row", "throughput", None),
    ("opt-66b", "a100-80gb-pcie4", 44, 440, 47, "row", "throughput", None),
    ("opt-2.7b", "a100-80gb-pcie4", 16, 539, 46, "column", "throughput", 8),
    ("llama-2-7b", "l40s-pcie4", 229, 210, 114, "column", "latency", None),
    ("llama-3-8b", "rtx3090-pcie4", 105, 584, 50, "column", "latency", 0),
    ("opt-1.3b", "l4-pcie4", 95, 1931, 72, "column", "throughput", 0),
    ("opt-1.3b", "l40s-pcie4", 1, 96, 5, "row", "latency", 0),
    ("llama-3-8b", "l40s-pcie4", 4, 404, 88, "row", "latency", None),
    ("llama-2-7b", "t4-pcie3", 117, 108, 12, "row", "throughput", 8),
    ("llama-2-7b", "h100-pcie5", 145, 1388, 3, "column", "latency", 8),
    ("opt-2.7b", "l40s-pcie4", 2, 147, 3, "row", "latency", 0),
    ("opt-66b", "l40s-pcie4", 7, 227, 3, "column", "latency", 2),
    ("opt-13b", "h100-pcie5", 10, 100, 9, "column", "latency", 0),
    ("mistral-7b", "a100-40gb-pcie4", 170, 937, 13, "row", "latency", 0),
    ("llama-2-7b", "a100-80gb-pcie4", 3, 185, 432, "column", "latency", 0),
    ("llama-3-8b", "rtx3090-pcie4", 1, 236, 6, "column", "throughput", 0),
    ("opt-1.3b", "cpu-generic", 8, 1724, 68, "row", "latency", 2),
    ("llama-2-70b", "kvpr-paper", 83, 65, 30, "row", "latency", 8),
    ("opt-175b", "a100-80gb-pcie4", 70, 678, 28, "row", "latency", 8),
    ("llama-2-13b", "l4-pcie4", 31, 1128, 74, "row", "throughput", None),
    ("opt-175b", "a100-80gb-pcie4", 6, 369, 493, "column", "latency", None),
    ("opt-13b", "rtx4090-pcie4", 4, 273, 429, "row", "latency", None),
    ("llama-2-13b", "rtx4090-pcie4", 28, 285, 9, "column", "latency", 8),
    # long prompts, all offloading
    ("llama-3-70b", "h100-pcie5", 8, 5513, 3, "column", "throughput", 8),
    ("opt-2.7b", "rtx4090-pcie4", 192, 1050, 3, "column", "throughput", None),
    ("llama-2-7b", "l4-pcie4", 8, 3850, 17, "row", "latency", None),
    ("llama-3-8b", "rtx-a6000-pcie4", 256, 3319, 21, "column", "latency", 0),
    ("opt-30b", "rtx-a6000-pcie4", 12, 1102, 134, "row", "throughput", None),
    ("llama-3-8b", "rtx4090-pcie4", 16, 2949, 6, "column", "throughput", 2),
    ("opt-2.7b", "t4-pcie3", 24, 1094, 70, "column", "latency", 2),
    ("opt-13b", "t4-pcie3", 12, 1458, 30, "row", "throughput", None),
    ("mistral-7b", "t4-pcie3", 24, 1834, 60, "row", "throughput", None),
    ("llama-2-13b", "a100-40gb-pcie4", 16, 1514, 3, "column", "latency", None),
    ("mistral-7b", "a100-80gb-pcie4", 96, 2438, 251, "row", "throughput", 8),
    ("llama-2-7b", "t4-pcie3", 32, 1161, 3, "column", "throughput", 2),
    ("mistral-7b", "kvpr-paper", 256, 1295, 404, "column", "latency", 2),
    ("llama-2-70b", "a100-40gb-pcie4", 32, 2374, 9, "column", "throughput", 8),
]


@dataclass
class Outcome:
    planned: Plan
    plan_s: float  # the fastest of three plans
    best: Plan | None  # the best forced plan, where one beats the planner's
    configurations: int  # forced choices that fit both memories
    solved: int  # forced plans solved before the bound ruled the rest out
    bound_misses: int  # solved forced plans whose figure fell below their lower bound
    split_gap: float | None
    check_s: float

    @property
    def gap(self) -> float:
        return figure(self.planned) / figure(self.best) - 1 if self.best else 0.0


def request(row) -> Request:
    model, hardware, batch, prompt, gen, schedule, objective, budget_gb = row
    return Request(load_model(model), load_hardware(hardware), batch, prompt, gen, schedule=schedule,
                   objective=objective, gpu_kv_budget_bytes=None if budget_gb is None else budget_gb * 10**9)


def name(row) -> str:
    model, hardware, batch, prompt, gen, schedule, objective, budget_gb = row
    budget = "" if budget_gb is None else f", GPU KV budget {budget_gb} GB"
    return f"{model} on {hardware}, batch {batch}, prompt {prompt}, gen {gen}, {schedule}, {objective}{budget}"


def figure(p: Plan) -> float:
    """The mean decode step, or with one new token the time until every sequence has it."""
    return p.predicted.decode_step_s if p.workload.decode_steps else all_first_tokens(Setup.from_plan(p))


def choice(p: Plan) -> str:
    return f"{p.workload.gpu_batches}/{p.weights_gpu_layers}/{p.chunks}"


def cost_grid(setup: Setup, steps, splits) -> np.ndarray:
    """Seconds of each step (rows) at each split (columns, clamped to the step's context)."""
    steps = np.asarray(steps)[:, None]
    splits = np.asarray(splits)[None, :]
    times = combine(setup, layer_times(setup, steps, np.minimum(splits, setup.workload.context(steps))))
    return np.broadcast_to(times, (steps.shape[0], splits.shape[1]))


def lower_bound(setup: Setup) -> float:
    """A lower bound on the figure of any plan with this setup (store sized per step).

    Exact without a decode step, without offloading and where recomputation cannot pay (split 0).
    Otherwise at a fixed split a step costs no less as the context grows, except the last step,
    which stores nothing: blocks of steps each at its first step's cost, least over every split,
    and the last step at its own least.
    """
    wl = setup.workload
    steps = wl.decode_steps
    if not steps:
        return all_first_tokens(replace(setup, act_tokens=0, kv_from=wl.stored_tokens))
    if not setup.offload or not scheduler.recompute_pays(setup.model):
        return float(step_times(setup, [0] * steps).mean())
    splits = np.arange(wl.context(steps - 1) + 1)
    last = steps - 1
    starts = sorted({int(s) for s in np.linspace(0, last, BOUND_BLOCKS + 1)} - {last})
    total = cost_grid(setup, [last], splits).min()
    if starts:
        ends = starts[1:] + [last]
        least = cost_grid(setup, starts, splits).min(axis=1)
        total += sum(cost * (end - start) for cost, start, end in zip(least, starts, ends))
    return float(total) / steps


def configurations(req: Request) -> dict[tuple[int, int, int], Setup]:
    """Every (GPU batches, weight layers on the GPU, chunks) that fits both memories, and its setup
    (one chunk count where nothing is offloaded: chunks then change nothing)."""
    req = req.resolved()
    p = DTYPE_BYTES[req.dtype]
    layers = req.model.num_layers
    found = {}
    for gpu_batches in (g for g in range(1, req.batch + 1) if req.batch % g == 0):
        forced = replace(req, gpu_batches=gpu_batches)
        wl = scheduler._workload(forced, gpu_batches)
        for weights in range(layers + 1):
            if weights == layers and scheduler._fits_resident(forced, wl, p):
                setup = Setup(req.model, req.hardware, wl, p, req.schedule, 1, layers, layers, False, req.cost_model)
            else:
                setup = scheduler._setup_for(forced, wl, p, weights, 1, [])
            if not scheduler._fits(forced, setup, []):
                continue
            for chunks in scheduler.CHUNK_CHOICES if setup.offload else (1,):
                found[(gpu_batches, weights, chunks)] = replace(setup, chunks=chunks)
    return found


def forced_search(req: Request, planned: float):
    """The best forced plan that beats the planner's figure (or None), the configurations, the
    plans solved, and how many of them fell below their bound."""
    layers = req.model.num_layers
    bounded = sorted((lower_bound(setup), key) for key, setup in configurations(req).items())
    best, best_figure, solved, misses = None, planned, 0, 0
    for bound, (gpu_batches, weights, chunks) in bounded:
        if bound >= min(best_figure, planned / (1 + TOLERANCE)):
            break
        try:
            forced = plan(replace(req, gpu_batches=gpu_batches, weights_on_gpu=weights / layers, chunks=chunks))
        except UserError:
            continue
        solved += 1
        misses += figure(forced) < bound * (1 - 1e-9)
        if figure(forced) < best_figure:
            best, best_figure = forced, figure(forced)
    return best, len(bounded), solved, misses


def split_gap(planned: Plan) -> float | None:
    """The planner's figure over that of the best split per segment at its choices, less 1."""
    wl = planned.workload
    if not (planned.offload and wl.decode_steps):
        return None
    setup = replace(Setup.from_plan(planned), act_tokens=None, kv_from=None)
    total = 0.0
    for first, last in segments_of(wl.decode_steps, wl.prompt_len):
        splits = np.arange(wl.context(first) + 1)
        total += cost_grid(setup, np.arange(first, last + 1), splits).sum(axis=0).min()
    return figure(planned) / (total / wl.decode_steps) - 1


def check(row) -> Outcome:
    req = request(row)
    plan_s = []
    for _ in range(3):
        began = time.perf_counter()
        planned = plan(req)
        plan_s.append(time.perf_counter() - began)
    began = time.perf_counter()
    best, configs, solved, misses = forced_search(req, figure(planned))
    gap = split_gap(planned)
    return Outcome(planned, min(plan_s), best, configs, solved, misses, gap, time.perf_counter() - began)


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def table_row(index: int, row, o: Outcome) -> str:
    model, hardware, batch, prompt, gen, schedule, objective, budget_gb = row
    best = (choice(o.best), f"{1e3 * figure(o.best):.2f}") if o.best else ("-", "-")
    return (f"{index:2d} {model:11s} {hardware:15s} {batch:5d} {prompt:6d} {gen:4d} {schedule:6s} {objective:10s} "
            f"{'-' if budget_gb is None else budget_gb:>2} {choice(o.planned):>8s} {1e3 * figure(o.planned):9.2f} "
            f"{best[0]:>8s} {best[1]:>9s} {percent(o.gap):>6s} {percent(o.split_gap):>6s} "
            f"{o.solved:4d}/{o.configurations:<5d} {o.plan_s:6.3f} {o.check_s:6.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK} workloads only, no results file")
    rows = WORKLOADS[:QUICK] if parser.parse_args().quick else WORKLOADS
    began = time.perf_counter()
    outcomes = []
    for index, row in enumerate(rows, 1):
        outcomes.append(check(row))
        o = outcomes[-1]
        print(f"[{index}/{len(rows)}] {name(row)}: gap {percent(o.gap)}, split gap {percent(o.split_gap)}, "
              f"{o.solved} of {o.configurations} forced plans solved, {o.check_s:.1f} s", file=sys.stderr, flush=True)
    wall_s = time.perf_counter() - began

    title = (f"planner_brute_force {datetime.date.today()} on {platform.node()} ({platform.machine()}): the planner's "
             "choices (GPU batches/weight layers on the GPU/chunks) against every forced choice; figure: mean decode "
             "step, ms (all first tokens where gen is 1); kv: GPU KV budget, GB; gap: exact above 0.5%, below it no "
             "forced choice beats the planner by more; split: the gap to the best split per segment")
    header = (f"{'#':>2} {'model':11s} {'hardware':15s} {'batch':>5s} {'prompt':>6s} {'gen':>4s} {'sched':6s} "
              f"{'objective':10s} {'kv':>2s} {'planner':>8s} {'figure':>9s} {'forced':>8s} {'figure':>9s} {'gap':>6s} "
              f"{'split':>6s} {'solved/configs':14s} {'plan s':>6s} {'check':>6s}")
    lines = [title, header]
    lines += [table_row(index, row, o) for index, (row, o) in enumerate(zip(rows, outcomes), 1)]
    within = sum(o.gap <= TOLERANCE for o in outcomes)
    worst = max(range(len(rows)), key=lambda i: outcomes[i].gap)
    split_worst = max(range(len(rows)), key=lambda i: outcomes[i].split_gap or 0.0)
    lines.append(f"{within} of {len(rows)} workloads within {100 * TOLERANCE:.1f}%; worst gap "
                 f"{percent(outcomes[worst].gap)} on {name(rows[worst])}")
    lines.append(f"splits per segment: worst gap {percent(outcomes[split_worst].split_gap)} on {name(rows[split_worst])}; "
                 f"lower bound broken by {sum(o.bound_misses for o in outcomes)} of "
                 f"{sum(o.solved for o in outcomes)} forced plans solved; {wall_s:.0f} s in all")
    print("\n".join(lines))
    if rows is WORKLOADS:
        out = Path(__file__).resolve().parent / "results" / f"planner-brute-force-{datetime.date.today()}.txt"
        out.write_text("\n".join(lines) + "\n")
    return 0 if within == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
