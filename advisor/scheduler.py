"""The scheduler: choose residency, batching and chunking, then solve a MILP for the splits.

Discrete choices are enumerated outside (GPU batches, weights kept on the GPU, chunks; the
resident KV share follows as the most layers that fit) and screened with the vectorised cost
model. For the best choice, a MILP (pulp, HiGHS in-process) finds the integer split of each
re-planning segment of decode steps: an epigraph per step and layer class for the pipelined
maximum (or the paper's T_act + max(T_rec, T_kv)), the recompute time linearised piecewise
(SOS2 with binaries) through breakpoints where it is evaluated exactly, the copy latencies
switched by binaries, and the host store (activations up to the largest split, KV from the
smallest) as a linear constraint. `LinearModel.evaluate` computes the same linearised objective
directly, so tests can check the MILP against brute force.

Grouped-query attention with g ≥ 2 query heads per KV head: an activation is as large as or
larger than its KV, so recomputation cannot pay; the split is 0 and the plan says why.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pulp

from advisor import memory, shapes
from advisor.costs import (Setup, all_first_tokens, in_sequence, layer_sums, layer_times, pcie_bytes_per_step, recompute_time, sample_time,
                           step_times, sweep, ttft)
from advisor.documents import DTYPE_BYTES, HardwareProfile, ModelSpec, Plan, Predicted, Workload
from advisor.errors import UserError
from advisor.plans import default_dtype, make_plan
from advisor.timemodel import copy_time, work_time

MAX_SEGMENTS = 8
REPLAN_GROWTH = 0.005  # re-plan once the context has grown by this share of the prompt
US = 1e6  # the MILP counts microseconds: solver tolerances (1e-7) are then negligible
SCREEN_SPLITS = 33
WIDEN_ROUNDS = 4  # at most this many re-solves with windows widened (each doubles a pressed one)
CHUNK_CHOICES = (1, 2, 4, 8)
MAX_GPU_BATCHES = {"row": 8, "column": 32}  # GPU batch counts tried: the batch's divisors up to this


@dataclass
class Request:
    model: ModelSpec
    hardware: HardwareProfile
    batch: int
    prompt_len: int
    gen_len: int
    schedule: str | None = None
    objective: str | None = None
    gpu_batches: int | None = None
    weights_on_gpu: float | None = None
    gpu_kv_budget_bytes: int | None = None
    split: int | None = None
    chunks: int | None = None
    cost_model: str = "pipelined"
    dtype: str | None = None

    def resolved(self) -> "Request":
        schedule, objective = self.schedule, self.objective
        if schedule is None:
            schedule = "column" if objective == "throughput" else "row"
        if objective is None:
            objective = "throughput" if schedule == "column" else "latency"
        return replace(self, schedule=schedule, objective=objective, dtype=self.dtype or default_dtype(self.model, self.hardware))


@dataclass(frozen=True)
class Miss:
    """Why one configuration does not fit: the memory that binds, how much it needed, in words."""

    memory: str  # "GPU" or "host"
    need_bytes: float
    text: str


@dataclass
class Candidate:
    setup: Setup
    score: float  # seconds per generated token per sequence (lower is better)
    best_split: int


@dataclass
class Solution:
    splits: list[int]
    objective_s: float
    solve_s: float = 0.0
    segments: list[tuple[int, int]] = field(default_factory=list)
    windows: list[tuple[int, int]] | None = None  # the split ranges of the last solve (None: all)


def segments_of(steps: int, prompt_len: int = 0, max_segments: int = MAX_SEGMENTS) -> list[tuple[int, int]]:
    """Contiguous [first, last] step ranges that share one split.

    The split is re-planned as the context grows: at most `max_segments` times, and only once the
    context has grown by about 1% of the prompt (the optimum moves in proportion to the context).
    """
    if steps == 0:
        return []
    min_steps = max(1, math.ceil(REPLAN_GROWTH * prompt_len))
    count = max(1, min(max_segments, steps, steps // min_steps))
    bounds = [steps * i // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(count)]


def recompute_pays(model: ModelSpec) -> bool:
    """An activation (h values) must be smaller than the KV it replaces (2·h_kv values)."""
    return model.hidden < 2 * model.kv_dim


class LinearModel:
    """The linearised per-segment decode cost the MILP minimises, also evaluable directly."""

    def __init__(self, setup: Setup, segments: list[tuple[int, int]],
                 windows: list[tuple[int, int]] | None = None):
        """`windows`: per segment, the [low, high] range the split may take (default: all of it)."""
        self.setup = setup
        self.segments = segments
        wl, model, hw, p = setup.workload, setup.model, setup.hw, setup.p
        b, G = wl.gpu_batch_size, wl.gpu_batches
        self.G = G
        self.column = setup.schedule == "column"
        self.serial = not hw.concurrent_lanes  # every part of a layer adds up (the CPU mode)
        self.classes = [(c, streamed) for c, offloaded, streamed in setup.layer_classes() if offloaded]
        self.weights = copy_time(hw.h2d, shapes.layer_weight_bytes(model, p))
        self.act_per_token = shapes.act_bytes(model, b, 1, p) / hw.h2d.bandwidth_Bps
        self.kv_per_token = shapes.kv_bytes(model, b, 1, p) / hw.h2d.bandwidth_Bps
        self.act_latency = setup.chunks * hw.h2d.latency_s
        self.kv_latency = hw.h2d.latency_s
        steps = np.arange(wl.decode_steps)
        context = wl.prompt_len + steps
        self.context = context
        fixed = (work_time(hw, "qkv", shapes.qkv_work(model, b, p), p)
                 + work_time(hw, "mlp", shapes.mlp_work(model, b, p), p)
                 + work_time(hw, "attention", shapes.decode_attention_work(model, b, context, p), p))
        self.gpu_fixed = np.broadcast_to(fixed, context.shape).astype(float)
        self.store = np.where(context < wl.stored_tokens, copy_time(hw.d2h, shapes.kv_bytes(model, b, 1, p)), 0.0)
        self.windows = windows or [(0, wl.context(first)) for first, _ in segments]
        self.breakpoints = [self._breakpoints(lo, hi) for lo, hi in self.windows]
        # the resident layers and the sample cost the same for every split
        resident = layer_times(setup, steps, np.zeros_like(steps))
        res_total, res_gpu = layer_sums(setup, resident, offloaded_only=False)
        self.resident_total = np.broadcast_to(res_total, context.shape).astype(float)
        self.resident_gpu = np.broadcast_to(res_gpu, context.shape).astype(float)
        self.sample = sample_time(setup)
        self.host_fixed = memory.host_weight_bytes(model, p, setup.weights_gpu_layers)
        self.host_per_act = setup.offloaded_layers * shapes.act_bytes(model, wl.batch, 1, p)
        self.host_per_kv = setup.offloaded_layers * shapes.kv_bytes(model, wl.batch, 1, p)
        self.host_limit = memory.host_limit(hw)

    def _breakpoints(self, low: int, top: int) -> tuple[np.ndarray, np.ndarray]:
        """Splits where the recompute time is evaluated exactly: every split up to the chunk
        count (where the chunking changes), then evenly and geometrically spaced ones."""
        chunks = self.setup.chunks
        xs = {x for x in range(0, min(chunks, top) + 1) if x >= low}
        start = max(low, min(chunks, top))
        xs.update(np.linspace(start, top, 13).round().astype(int).tolist())
        if top > start:
            xs.update(np.geomspace(max(start, 1), top, 6).round().astype(int).tolist())
        xs = np.array(sorted(x for x in xs if low <= x <= top))
        return xs, np.asarray(recompute_time(self.setup, xs), dtype=float)

    def upper(self, k: int) -> int:
        return int(self.context[self.segments[k][0]])

    # --- the linearised cost, evaluated directly --------------------------------------------

    def step_cost(self, t: int, k: int, split: int) -> float:
        xs, rs = self.breakpoints[k]
        rec = float(np.interp(split, xs, rs))
        act = (self.act_latency if split >= 1 else 0.0) + split * self.act_per_token
        first = t == self.segments[k][0]
        kv = (0.0 if first and split == self.upper(k) else self.kv_latency) + (self.context[t] - split) * self.kv_per_token
        gpu = self.gpu_fixed[t] + rec
        total, gpu_total = self.resident_total[t], self.resident_gpu[t]
        for count, streamed in self.classes:
            w = self.weights if streamed else 0.0
            if self.setup.variant == "paper":
                layer = in_sequence(w, act + max(rec, kv) + self.gpu_fixed[t], self.G, self.column)
            elif self.serial:
                layer = in_sequence(w, act + kv + gpu + self.store[t], self.G, self.column)
            elif self.column:
                layer = max(w + self.G * (act + kv), self.G * gpu, self.G * self.store[t])
            else:
                layer = self.G * max(w + act + kv, gpu, self.store[t])
            total += count * layer
            gpu_total += count * self.G * gpu
        if self.setup.variant == "paper" or self.serial:
            return total + self.sample
        return max(total, gpu_total + self.sample)

    def host_bytes(self, splits: list[int]) -> float:
        stored = self.setup.workload.stored_tokens
        return self.host_fixed + self.host_per_act * max(splits) + self.host_per_kv * (stored - min(splits))

    def evaluate(self, splits: list[int]) -> float:
        """Sum over decode steps of the linearised step cost (inf when the host store overflows)."""
        if splits and self.host_bytes(splits) > self.host_limit:
            return math.inf
        return sum(self.step_cost(t, k, splits[k])
                   for k, (first, last) in enumerate(self.segments) for t in range(first, last + 1))

    # --- the MILP -----------------------------------------------------------------------------

    def solve(self) -> Solution:
        prob = pulp.LpProblem("kvpr_splits", pulp.LpMinimize)
        objective = []
        splits, act_max, kv_min = [], None, None
        stored = self.setup.workload.stored_tokens
        act_max = prob.add_variable("act_max", lowBound=0, upBound=stored)
        kv_min = prob.add_variable("kv_min", lowBound=0, upBound=stored)
        for k, (first, last) in enumerate(self.segments):
            low, top = self.windows[k]
            split = prob.add_variable(f"l{k}", lowBound=low, upBound=top, cat="Integer")
            splits.append(split)
            prob += act_max >= split
            prob += kv_min <= split
            nonzero = prob.add_variable(f"z{k}", cat="Binary")
            prob += split >= nonzero
            prob += split <= top * nonzero
            whole = prob.add_variable(f"y{k}", cat="Binary")  # split == context of the first step
            prob += split >= self.upper(k) * whole
            prob += split <= self.upper(k) - 1 + whole
            xs, rs = self.breakpoints[k]
            rs = rs * US
            keep = xs <= top
            xs, rs = xs[keep], rs[keep]
            # multiple choice: one interval [x_j, x_j+1] is picked, the split lies in it and
            # the recompute time is interpolated along it (locally ideal, tight LP relaxation)
            rec_terms, split_terms, picks = [], [], []
            for j in range(max(len(xs) - 1, 1)):
                lo, hi = float(xs[j]), float(xs[min(j + 1, len(xs) - 1)])
                r_lo, r_hi = float(rs[j]), float(rs[min(j + 1, len(xs) - 1)])
                pick = prob.add_variable(f"d{k}_{j}", cat="Binary")
                part = prob.add_variable(f"x{k}_{j}", lowBound=0)
                prob += part >= lo * pick
                prob += part <= hi * pick
                slope = (r_hi - r_lo) / (hi - lo) if hi > lo else 0.0
                rec_terms.append((r_lo - slope * lo) * pick + slope * part)
                split_terms.append(part)
                picks.append(pick)
            prob += pulp.lpSum(picks) == 1
            prob += pulp.lpSum(split_terms) == split
            rec = pulp.lpSum(rec_terms)
            act = US * self.act_latency * nonzero + US * self.act_per_token * split
            upper = self.upper(k)

            def act_at(l):
                return US * (self.act_latency * (l >= 1) + self.act_per_token * l)

            def kv_at(l, t):
                latency = 0.0 if (t == first and l == upper) else self.kv_latency
                return US * (latency + self.kv_per_token * (self.context[t] - l))

            def rec_at(l):
                return float(np.interp(l, xs, rs))

            ends = sorted({low, max(low, 1), top})
            for t in range(first, last + 1):
                kv_lat = US * self.kv_latency * (1 - whole) if t == first else US * self.kv_latency
                kv = kv_lat + US * self.kv_per_token * (float(self.context[t]) - split)
                fixed = US * float(self.gpu_fixed[t])
                store = US * float(self.store[t])
                if self.setup.variant == "paper":
                    # U = max(rec, kv); kv − rec falls with the split, so one side may win throughout
                    gap = [kv_at(l, t) - rec_at(l) for l in (low, top)]
                    for c, (count, streamed) in enumerate(self.classes):
                        w = US * self.weights if streamed else 0.0
                        if gap[1] >= 0:
                            U = kv
                        elif gap[0] <= 0:
                            U = rec
                        else:
                            U = prob.add_variable(f"U{t}_{c}")
                            prob += U >= rec
                            prob += U >= kv
                        objective.append(count * in_sequence(w, act + U + fixed, self.G, self.column))
                    objective.append(US * (float(self.resident_total[t]) + self.sample))
                    continue
                if self.serial:
                    for count, streamed in self.classes:
                        w = US * self.weights if streamed else 0.0
                        objective.append(count * in_sequence(w, act + kv + fixed + rec + store, self.G, self.column))
                    objective.append(US * (float(self.resident_total[t]) + self.sample))
                    continue

                def load_at(l, w):
                    if self.column:
                        return w + self.G * (act_at(l) + kv_at(l, t))
                    return self.G * (w + act_at(l) + kv_at(l, t))

                def gpu_at(l):
                    return self.G * (fixed + rec_at(l))

                writeback = self.G * store
                weights = [US * self.weights if streamed else 0.0 for _, streamed in self.classes]
                resident = US * float(self.resident_total[t])
                other_gpu = US * (float(self.resident_gpu[t]) + self.sample)

                def layers_at(l):
                    return resident + sum(count * max(load_at(l, w), gpu_at(l), writeback)
                                          for (count, _), w in zip(self.classes, weights))

                def gpu_total_at(l):
                    return other_gpu + sum(count * gpu_at(l) for count, _ in self.classes)

                gpu = self.G * (fixed + rec)
                gpu_total = other_gpu + pulp.lpSum(count * gpu for count, _ in self.classes)
                # step = max(Σ layer maxima, Σ GPU + sample); their difference falls with the split
                step_gap = [layers_at(l) - gpu_total_at(l) for l in ends]
                if max(step_gap) <= 0:
                    objective.append(gpu_total)
                    continue
                layer_terms = [resident]
                for c, ((count, _), w) in enumerate(zip(self.classes, weights)):
                    load = w + self.G * (act + kv) if self.column else self.G * (w + act + kv)
                    gap = [load_at(l, w) - gpu_at(l) for l in ends]
                    if min(gap) >= 0 and all(load_at(l, w) >= writeback for l in ends):
                        layer_terms.append(count * load)
                    elif max(gap) <= 0 and all(gpu_at(l) >= writeback for l in ends):
                        layer_terms.append(count * gpu)
                    else:
                        T = prob.add_variable(f"T{t}_{c}")
                        prob += T >= load
                        prob += T >= gpu
                        if store > fixed:  # else implied by the GPU bound
                            prob += T >= writeback
                        layer_terms.append(count * T)
                layers = pulp.lpSum(layer_terms)
                if min(step_gap) >= 0:
                    objective.append(layers)
                else:
                    S = prob.add_variable(f"S{t}")
                    prob += S >= layers
                    prob += S >= gpu_total
                    objective.append(S)
        prob += (self.host_fixed + self.host_per_act * act_max
                 + self.host_per_kv * (stored - kv_min)) <= self.host_limit
        prob += pulp.lpSum(objective)
        status = prob.solve(_solver())
        if prob.status != pulp.LpStatusOptimal or prob.sol_status != pulp.LpSolutionOptimal:
            raise _NoSolution(pulp.LpStatus.get(status, str(status)))
        values = [int(round(v.value())) for v in splits]
        return Solution(splits=values, objective_s=float(pulp.value(prob.objective)) / US, segments=self.segments)


class _NoSolution(Exception):
    pass


def _solver():
    available = pulp.listSolvers(onlyAvailable=True)
    if "HiGHS" in available:
        return pulp.HiGHS(msg=False, gapRel=1e-9, threads=1)
    if "PULP_CBC_CMD" in available:
        return pulp.PULP_CBC_CMD(msg=False, gapRel=1e-9)
    raise UserError("no MILP solver: install pulp[highs] (highspy)")


def expand(solution: Solution, steps: int) -> list[int]:
    splits = [0] * steps
    for (first, last), split in zip(solution.segments, solution.splits):
        for t in range(first, last + 1):
            splits[t] = split
    return splits


# ---------------------------------------------------------------------------------------------
# Enumeration of the discrete choices
# ---------------------------------------------------------------------------------------------


def check_request(req: Request) -> None:
    m = req.model
    if req.prompt_len + req.gen_len - 1 > m.max_positions:
        raise UserError(
            f"--prompt-len {req.prompt_len} + --gen-len {req.gen_len} needs {req.prompt_len + req.gen_len - 1} "
            f"positions; {m.name} has {m.max_positions}: shorten the prompt or the generation"
        )
    if req.gpu_batches is not None and req.batch % req.gpu_batches:
        raise UserError(f"--batch {req.batch} is not a multiple of --gpu-batches {req.gpu_batches}")
    if req.split is not None and req.split > req.prompt_len:
        raise UserError(f"--split {req.split} exceeds the prompt ({req.prompt_len} tokens)")


def _weight_choices(req: Request) -> list[int]:
    L = req.model.num_layers
    if req.weights_on_gpu is not None:
        return [int(round(req.weights_on_gpu * L))]
    return sorted({L, (3 * L) // 4, L // 2, L // 4, 0}, reverse=True)


def _batch_choices(req: Request) -> list[int]:
    """GPU batch counts to try: every divisor of the batch up to the schedule's limit. More GPU
    batches shrink the per-batch buffers and prefill workspace, which can leave room for more weights
    or KV on the GPU (batch 117 as 3 GPU batches of 39 kept all of Llama-2-7B's weights on a T4)."""
    if req.gpu_batches is not None:
        return [req.gpu_batches]
    return [g for g in range(1, MAX_GPU_BATCHES[req.schedule] + 1) if req.batch % g == 0]


def _workload(req: Request, gpu_batches: int) -> Workload:
    return Workload(batch=req.batch, prompt_len=req.prompt_len, gen_len=req.gen_len,
                    gpu_batches=gpu_batches, gpu_kv_budget_bytes=req.gpu_kv_budget_bytes)


def _fits_resident(req: Request, wl: Workload, p: int) -> bool:
    need = memory.gpu_memory(req.model, req.hardware, wl, p, req.model.num_layers, req.model.num_layers, False)
    kv = req.model.num_layers * memory.resident_kv_bytes_per_layer(req.model, wl, p)
    budget_ok = req.gpu_kv_budget_bytes is None or kv <= req.gpu_kv_budget_bytes
    return need.total <= req.hardware.gpu_memory_bytes and budget_ok


def _split_grid(req: Request, setup: Setup) -> np.ndarray:
    """The splits a candidate is screened over: the forced one, or a grid up to the prompt."""
    if req.split is not None:
        return np.array([req.split])
    top = req.prompt_len if recompute_pays(setup.model) else 0
    return np.unique(np.linspace(0, top, SCREEN_SPLITS).round().astype(int))


def _host_need(setup: Setup, grid: np.ndarray) -> np.ndarray:
    """Pinned host bytes per split of the grid: streamed weights and the store the split needs
    (none without a decode step: `plans.store_policy`)."""
    wl = setup.workload
    act_tokens, kv_from = (grid, grid) if wl.decode_steps else (0, wl.stored_tokens)
    need = (memory.host_weight_bytes(setup.model, setup.p, setup.weights_gpu_layers)
            + memory.host_store_bytes(setup.model, wl, setup.p, setup.offloaded_layers, act_tokens, kv_from))
    return np.broadcast_to(need, np.shape(grid))


def _score(req: Request, setup: Setup, reasons: list[Miss]) -> Candidate | None:
    """The candidate's best cost over a grid of splits, or None when the host store cannot fit."""
    grid = _split_grid(req, setup)
    host_ok = _host_fits(req, setup, grid, reasons)
    if not host_ok.any():
        return None
    if not setup.workload.decode_steps:  # one new token: the whole batch's prefill is the cost
        return Candidate(setup, all_first_tokens(setup), int(grid[0]))
    times = np.where(host_ok, sweep(setup, grid), np.inf)
    best = int(np.argmin(times))
    return Candidate(setup, float(times[best]) / req.batch, int(grid[best]))


def _setup_for(req: Request, wl: Workload, p: int, weights_gpu_layers: int, chunks: int,
               reasons: list[Miss]) -> Setup | None:
    """The configuration with these weights on the GPU and as much KV resident as fits, or None
    (with the reason) when not even the buffers fit beside the weights."""
    model, hw, nw = req.model, req.hardware, weights_gpu_layers
    resident = memory.max_resident_kv_layers(model, hw, wl, p, nw, req.gpu_kv_budget_bytes)
    if resident < 0:
        need = memory.gpu_memory(model, hw, wl, p, nw, 0, True)
        items = memory.itemised({**need.items(), "reserve": need.reserved})
        reasons.append(Miss("GPU", need.total,
            f"GPU memory: {nw} layers of weights on the GPU and {wl.gpu_batches} GPU batch(es) need "
            f"{memory.gib(need.total)} with no KV resident ({items}); the GPU has {memory.gib(hw.gpu_memory_bytes)}"))
        return None
    offload = resident < model.num_layers
    return Setup(model, hw, wl, p, req.schedule, chunks if offload else 1, nw, resident, offload, req.cost_model)


def _host_fits(req: Request, setup: Setup, grid: np.ndarray, reasons: list[Miss]) -> np.ndarray:
    """Per split of the grid, whether host memory holds it; the reason when none does."""
    host, limit, hw = _host_need(setup, grid), memory.host_limit(req.hardware), req.hardware
    fits = host <= limit
    if not fits.any():
        reasons.append(Miss("host", float(host.min()),
                            f"host memory: the pinned store and streamed weights need at least {memory.gib(host.min())}; "
                            f"the host allows {memory.gib(limit)} (90% of {memory.gib(hw.host_memory_bytes)})"))
    return fits


def _fits(req: Request, setup: Setup | None, reasons: list[Miss]) -> bool:
    """Whether a configuration fits GPU and host memory for some split (no cost model: cheap)."""
    return setup is not None and bool(_host_fits(req, setup, _split_grid(req, setup), reasons).any())


def _fitting_placements(req: Request, wl: Workload, p: int, placements, chunks: int, reasons: list[Miss]):
    """The weight placements (layers on the GPU) among `placements` that fit both memories, in order."""
    return (nw for nw in placements if _fits(req, _setup_for(req, wl, p, nw, chunks, reasons), reasons))


def _most_weights_with_all_kv(req: Request, wl: Workload, p: int, top: int) -> int | None:
    """The most layers of weights (at most `top`) that leave room for every layer's KV on the GPU,
    or None. More weights leave less room, so the layers of KV that fit fall as the weights grow:
    bisection."""
    def all_kv(nw: int) -> bool:
        return memory.max_resident_kv_layers(req.model, req.hardware, wl, p, nw,
                                             req.gpu_kv_budget_bytes) >= req.model.num_layers

    if not all_kv(0):
        return None
    low, high = 0, top
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if all_kv(middle) else (low, middle - 1)
    return low


def _placements_scored(req: Request, wl: Workload, p: int, chunks: int) -> tuple[list[Candidate], list[Miss]]:
    """The weight placements worth scoring for one GPU batching, scored; the reasons of the misses.

    The screened ones (all, 3/4, 1/2, 1/4, none of the layers, or the forced one) first. GPU memory
    caps the weights on the GPU from above and host memory (where streamed weights live) from below,
    and the range that fits can end between the screened placements: its top (the least weight
    streaming) is scored too, and where no screened placement fits, both its ends (with the reasons
    of every placement, for the refusal). So is the most weights that leave room for the whole KV
    cache: below it the cost falls again, no KV crossing PCIe (a second tooth that the steps below
    cannot climb over). Last, one layer at a time from the best while the cost falls: one more
    layer of weights can cost several layers of resident KV, so the cost is not smooth."""
    scored: dict[int, Candidate | None] = {}
    reasons: list[Miss] = []

    def score(nw: int, reasons_to: list[Miss]) -> Candidate | None:
        if nw not in scored:
            setup = _setup_for(req, wl, p, nw, chunks, reasons_to)
            scored[nw] = _score(req, setup, reasons_to) if setup else None
        return scored[nw]

    for nw in _weight_choices(req):  # from most layers on the GPU to fewest
        score(nw, reasons)
    if req.weights_on_gpu is None:
        fitted = any(scored.values())
        scan_reasons: list[Miss] = []
        fits = _fitting_placements(req, wl, p, range(req.model.num_layers, -1, -1), chunks, scan_reasons)
        top = next(fits, None)
        ends = {top} if fitted else {top, min(fits, default=top)}
        if top is not None:
            ends.add(_most_weights_with_all_kv(req, wl, p, top))
        for nw in sorted(ends - {None}, reverse=True):
            score(nw, [])
        if not fitted:
            reasons = scan_reasons
        best = min((c for c in scored.values() if c), key=lambda c: c.score, default=None)
        for direction in (1, -1) if best else ():
            here, nw = best, best.setup.weights_gpu_layers + direction
            while 0 <= nw <= req.model.num_layers:
                next_one = score(nw, [])
                if next_one is None or next_one.score >= here.score:
                    break
                here, nw = next_one, nw + direction
    return [c for c in scored.values() if c], reasons


def enumerate_candidates(req: Request) -> tuple[list[Candidate], list[Miss]]:
    """Feasible discrete choices, scored by the cost model over a grid of splits.

    GPU batches and weight placement are screened at the middle chunk count; the chunk count is
    then chosen for the best of them.
    """
    p = DTYPE_BYTES[req.dtype]
    reasons: list[Miss] = []
    candidates: list[Candidate] = []
    chunk_choices = [req.chunks] if req.chunks else list(CHUNK_CHOICES)
    screen_chunks = chunk_choices[len(chunk_choices) // 2]
    for G in _batch_choices(req):
        found, misses = _placements_scored(req, _workload(req, G), p, screen_chunks)
        candidates += found
        reasons += misses
    if req.split is not None and any(c.setup.offload for c in candidates):
        candidates = [c for c in candidates if c.setup.offload]  # a forced split asks what offloading does
    if candidates and len(chunk_choices) > 1:
        best = min(candidates, key=lambda c: c.score)
        if best.setup.offload:
            for chunks in chunk_choices:
                if chunks != best.setup.chunks:
                    candidate = _score(req, replace(best.setup, chunks=chunks), reasons)
                    if candidate:
                        candidates.append(candidate)
    return candidates, reasons


def screen_windows(setup: Setup, segments: list[tuple[int, int]], screened: int | None) -> list[tuple[int, int]] | None:
    """Per segment, the split range around the screened optimum (scaled with the context).

    The decode cost over the split is unimodal per layer (transfer falls, GPU work rises), so the
    optimum lies within a grid step or two of the best grid point; the window keeps the MILP small.
    """
    if screened is None:
        return None
    prompt = setup.workload.prompt_len
    fraction = screened / prompt
    half = max(2 * math.ceil(prompt / (SCREEN_SPLITS - 1)), 16)
    windows = []
    for first, last in segments:
        top = setup.workload.context(first)
        grown = setup.workload.context(last) - prompt
        centre = round(fraction * top)
        windows.append((max(0, centre - half), min(top, centre + half + grown)))
    return windows


def widened(windows: list[tuple[int, int]] | None, splits: list[int],
            tops: list[int]) -> list[tuple[int, int]] | None:
    """The windows with each edge that a split sits on, and that is not the range's own end (0 or
    the segment's first context), pushed out by the window's width; None when no split sits on one."""
    if windows is None:
        return None
    wider, moved = [], False
    for (low, high), split, top in zip(windows, splits, tops):
        width = max(high - low, 1)
        if split == low and low > 0:
            low, moved = max(0, low - width), True
        if split == high and high < top:
            high, moved = min(top, high + width), True
        wider.append((low, high))
    return wider if moved else None


NO_OFFLOAD_NOTE = "no offloading needed: the whole KV cache fits on the GPU beside the weights"


def solve_splits(setup: Setup, forced: int | None = None, screened: int | None = None,
                 windows: list[tuple[int, int]] | None = None) -> Solution:
    """Per-segment splits by MILP (or the forced / GQA answer), with the solve time; `windows`
    (an earlier solve's) instead of those around the screened split."""
    steps = setup.workload.decode_steps
    if steps == 0:
        return Solution(splits=[], objective_s=0.0)
    if not setup.offload:
        return Solution(splits=[0], objective_s=0.0, segments=[(0, steps - 1)])
    if forced is not None or not recompute_pays(setup.model):
        split = forced or 0
        return Solution(splits=[split], objective_s=0.0, segments=[(0, steps - 1)])
    segments = segments_of(steps, setup.workload.prompt_len)
    windows = windows or screen_windows(setup, segments, screened)
    start = time.perf_counter()
    try:
        solution = LinearModel(setup, segments, windows).solve()
        # the windows follow the screened constant split, which can sit far from a segment's own
        # optimum (a long generation beside a short prompt): a split on a window's inner edge may
        # be held there by the window, so that window is widened and the MILP solved again
        for _ in range(WIDEN_ROUNDS):
            wider = widened(windows, solution.splits, [setup.workload.context(first) for first, _ in segments])
            if wider is None:
                break
            again = LinearModel(setup, segments, wider).solve()
            windows, settled = wider, again.splits == solution.splits
            solution = again
            if settled:  # the edge held for another reason (host memory): wider windows won't move it
                break
    except _NoSolution as error:
        # the windows follow the screened split as the context grows; where host memory is tight a
        # window can leave no split the store holds (its act and KV extents span the segments), so
        # the full range is solved before giving up
        try:
            if windows is None:
                raise error
            windows = None
            solution = LinearModel(setup, segments, None).solve()
        except _NoSolution as final:
            raise UserError(f"no feasible split: the MILP reports {final}; the host store may not fit") from None
    solution.solve_s = time.perf_counter() - start
    solution.windows = windows
    return solution


def plan(req: Request) -> Plan:
    """The best plan for a request, with its predicted figures and baselines."""
    req = req.resolved()
    check_request(req)
    p = DTYPE_BYTES[req.dtype]
    notes: list[str] = []
    if not recompute_pays(req.model):
        notes.append(
            f"recomputation cannot pay: {req.model.name} has {req.model.gqa_group} query heads per KV head, "
            f"so an activation ({req.model.hidden} values) is at least as large as its KV "
            f"({2 * req.model.kv_dim} values); "
            + ("split 0 (full KV transfer)" if req.split is None else f"--split {req.split} as asked"))

    wl1 = _workload(req, _batch_choices(req)[0])
    if req.weights_on_gpu in (None, 1.0) and _fits_resident(req, wl1, p):
        setup = Setup(req.model, req.hardware, wl1, p, req.schedule, 1, req.model.num_layers,
                      req.model.num_layers, False, req.cost_model)
        notes.append(NO_OFFLOAD_NOTE + ("" if req.gpu_kv_budget_bytes is None else " within --gpu-kv-budget")
                     + (": --split has no effect" if req.split is not None else ""))
        return _finish(req, setup, [0] * wl1.decode_steps, notes, solve_s=0.0)

    candidates, reasons = enumerate_candidates(req)
    if not candidates:
        raise UserError(f"the plan cannot fit: {why_nothing_fits(req, reasons)}")
    best = min(candidates, key=lambda c: c.score)
    if not best.setup.offload:
        notes.append(NO_OFFLOAD_NOTE + (": --split has no effect" if req.split is not None else ""))
    setup = best.setup
    solution = solve_splits(setup, req.split, best.best_split)
    splits = expand(solution, setup.workload.decode_steps)
    if setup.offload and not req.chunks and req.split is None:
        # the chunk count was chosen on constant splits; where the solved splits grow with the
        # context another count can serve them better (all tie at a constant split 0): the count
        # that costs least at these splits gets its own solve, and the cheaper plan is kept. With
        # every split 0 no activation crosses PCIe, and one chunk says so.
        def cost(s: Setup, per_step: list[int]) -> float:
            return float(step_times(s, per_step).sum())

        other = min((replace(setup, chunks=c) for c in CHUNK_CHOICES), key=lambda s: (cost(s, splits), s.chunks))
        if other.chunks != setup.chunks:
            setup, again = other, solve_splits(other, None, best.best_split, solution.windows)
            resolved = expand(again, setup.workload.decode_steps)
            if cost(setup, resolved) < cost(setup, splits):
                solution, splits = again, resolved
    return _finish(req, setup, splits, notes, solve_s=solution.solve_s)


def why_nothing_fits(req: Request, reasons: list[Miss]) -> str:
    """The nearest miss of each memory that binds (the configuration that needed the least of it),
    and advice that would help with it. Streamed weights live in host memory: moving weights off the
    GPU trades one for the other, so both can bind, at different placements."""
    gpu = [r for r in reasons if r.memory == "GPU"]
    host = [r for r in reasons if r.memory == "host"]
    shown = [min(misses, key=lambda r: r.need_bytes).text for misses in (gpu, host) if misses] \
        or ["no configuration fits"]
    smallest = batch_unit(req) if req.gpu_batches else 1
    advice = ["lower --batch, --prompt-len or --gen-len" if req.batch > smallest else "lower --prompt-len or --gen-len"]
    forced = req.weights_on_gpu
    if gpu and not host and forced:
        advice.append("keep fewer weights on the GPU (--weights-on-gpu)")
    if host and not gpu and forced is not None and forced < 1:
        advice.append("keep more weights on the GPU (--weights-on-gpu)")
    memories = " and ".join(name for name, binding in (("GPU", gpu), ("host", host)) if binding)
    advice.append(f"or choose hardware with more {memories} memory" if memories else "or choose other hardware")
    text = "; ".join(shown) + "; " + ", ".join(advice)
    if req.batch > smallest:
        largest = largest_batch_that_fits(req)
        text += f" (--batch {largest} fits, all else equal)" if largest else f" (not even --batch {smallest} fits)"
    return text


def fits_somehow(req: Request) -> bool:
    """Whether some GPU batching and weight placement fits GPU and host memory (memory only)."""
    p = DTYPE_BYTES[req.dtype]
    chunks = req.chunks or CHUNK_CHOICES[len(CHUNK_CHOICES) // 2]
    placements = _weight_choices(req) if req.weights_on_gpu is not None else range(req.model.num_layers, -1, -1)
    for G in _batch_choices(req):
        if req.batch % G:
            return False  # a forced GPU batch count that does not divide the batch
        wl = _workload(req, G)
        if next(_fitting_placements(req, wl, p, placements, chunks, []), None) is not None:  # 0 layers is a placement
            return True
    return False


def batch_unit(req: Request) -> int:
    """A batch step over which fitting is monotone: the largest GPU batch count the planner may use
    (a forced count, or the schedule's limit). Its multiples can always be split that finely, into
    GPU batches no larger than any split of the next multiple up allows."""
    return req.gpu_batches or MAX_GPU_BATCHES[req.schedule]


def largest_batch_that_fits(req: Request) -> int | None:
    """The largest batch below the request's that fits, all else equal (memory only), or None.

    With a given GPU batch count, memory grows with the batch, so fitting is monotone over the
    multiples of `batch_unit`: bisection finds the largest such multiple. In the column schedule a
    batch between it and the next multiple can still fit with fewer, larger GPU batches (18 as 2 of
    9 where 17 has only 1 of 17), so those are tried from the top; none above the next multiple can
    (its multiple below would fit too)."""
    unit = batch_unit(req)

    def fits(batch: int) -> bool:
        return fits_somehow(replace(req, batch=batch))

    low, high = 0, (req.batch - 1) // unit
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle * unit):
            low = middle
        else:
            high = middle - 1
    best = low * unit
    if not req.gpu_batches and unit > 1:
        best = next((b for b in range(min(req.batch - 1, best + unit - 1), best, -1) if fits(b)), best)
    return best or None


def _finish(req: Request, setup: Setup, splits: list[int], notes: list[str], solve_s: float) -> Plan:
    draft = make_plan(
        setup.model, setup.hw, setup.workload, splits=splits, chunks=setup.chunks,
        schedule=req.schedule, objective=req.objective, dtype=req.dtype,
        weights_gpu_layers=setup.weights_gpu_layers, resident_kv_layers=setup.resident_kv_layers,
        offload=setup.offload, cost_model=req.cost_model, notes=notes,
        provenance={"solver": "pulp/HiGHS MILP" if solve_s else "closed form",
                    "solve_s": f"{solve_s:.4f}", "segments": str(len(set(splits)))},
    )
    draft.predicted = predict(draft, req)
    if draft.predicted.baseline_step_s is not None:
        full_transfer = float(_host_need(setup, np.array([0]))[0])
        if full_transfer > memory.host_limit(setup.hw):
            draft.notes.append(
                f"full transfer (split 0) would need {memory.gib(full_transfer)} of pinned host memory, more than "
                f"the host allows ({memory.gib(memory.host_limit(setup.hw))}): the speedup is against a plan "
                "that could not run here")
    return draft


def predict(plan: Plan, req: Request | None = None) -> Predicted:
    """The plan's figures from the cost model, with its full-transfer and resident baselines."""
    setup = Setup.from_plan(plan)
    wl, p = plan.workload, setup.p
    times = step_times(setup, plan.splits) if wl.decode_steps else np.zeros(0)
    mean = float(times.mean()) if len(times) else 0.0
    gpu = memory.gpu_memory(plan.model, plan.hardware, wl, p, plan.weights_gpu_layers,
                            plan.resident_kv_layers, plan.offload)
    store = memory.host_store_bytes(plan.model, wl, p, plan.offloaded_layers if plan.offload else 0,
                                    plan.store.act_tokens, plan.store.kv_from) if plan.offload else 0
    host = int(store) + memory.host_weight_bytes(plan.model, p, plan.weights_gpu_layers)
    baseline = None
    if plan.offload and wl.decode_steps:
        base = replace(setup, act_tokens=0, kv_from=0)
        baseline = float(step_times(base, [0] * wl.decode_steps).mean())
    resident = None
    if wl.decode_steps:
        full = Setup(plan.model, plan.hardware, wl, p, plan.schedule, 1, plan.model.num_layers,
                     plan.model.num_layers, False, plan.cost_model)
        fits = memory.gpu_memory(plan.model, plan.hardware, wl, p, plan.model.num_layers,
                                 plan.model.num_layers, False).total <= plan.hardware.gpu_memory_bytes
        if fits:
            resident = float(step_times(full, [0] * wl.decode_steps).mean())
    return Predicted(
        ttft_s=ttft(setup),
        step_times_s=[float(t) for t in times],
        decode_step_s=mean,
        decode_tokens_per_s=wl.batch / mean if mean else 0.0,
        pcie_bytes_per_step=pcie_bytes_per_step(setup, plan.splits),
        gpu_memory_bytes=gpu.total,
        host_memory_bytes=host,
        host_pinned_bytes=host,
        baseline_step_s=baseline,
        speedup_vs_full_transfer=baseline / mean if baseline and mean else None,
        resident_step_s=resident,
        speedup_vs_resident=resident / mean if resident and mean else None,
    )
