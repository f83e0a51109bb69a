"""The cost model: how long prefill and each decode step take for a choice of splits.

It costs the same work the operation graph issues (sizes from `advisor.shapes`, times from
`advisor.timemodel`), aggregated per layer instead of per operation, and vectorised with numpy
over splits and steps so the TUI and the scheduler can sweep thousands of configurations.

Two variants:
- `pipelined` (what the runtime does): a layer's loads run while the previous layer computes and
  chunk k's recompute overlaps chunk k+1's transfer, so in steady state a layer costs
  max(its PCIe time, its GPU time, its write-back time).
- `paper` (DESIGN §1, exactly): a layer costs T_act + max(T_rec, T_kv), then its other compute.

On a device whose lanes do not run concurrently (the CPU mode) every part of a layer adds up.

Row schedule: GPU batches one after the other, each loading the weights. Column schedule: a
layer's weights are loaded once for all GPU batches, whose loads and compute add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advisor import shapes
from advisor.documents import DTYPE_BYTES, HardwareProfile, ModelSpec, Plan, Workload
from advisor.timemodel import copy_time, work_time


@dataclass(frozen=True)
class Setup:
    """Everything but the splits: the discrete choices a cost is evaluated for."""

    model: ModelSpec
    hw: HardwareProfile
    workload: Workload
    p: int
    schedule: str = "row"
    chunks: int = 1
    weights_gpu_layers: int = 0
    resident_kv_layers: int = 0
    offload: bool = True
    variant: str = "pipelined"
    act_tokens: int | None = None  # store policy; None: derived from the split being costed
    kv_from: int | None = None

    @classmethod
    def from_plan(cls, plan: Plan) -> "Setup":
        return cls(
            model=plan.model, hw=plan.hardware, workload=plan.workload, p=DTYPE_BYTES[plan.dtype],
            schedule=plan.schedule, chunks=plan.chunks, weights_gpu_layers=plan.weights_gpu_layers,
            resident_kv_layers=plan.resident_kv_layers, offload=plan.offload, variant=plan.cost_model,
            act_tokens=plan.store.act_tokens, kv_from=plan.store.kv_from,
        )

    @property
    def offloaded_layers(self) -> int:
        return self.model.num_layers - self.resident_kv_layers if self.offload else 0

    def layer_classes(self) -> list[tuple[int, bool, bool]]:
        """(count, KV offloaded, weights streamed) for the four kinds of layer."""
        L, nw = self.model.num_layers, self.weights_gpu_layers
        r = self.resident_kv_layers if self.offload else L
        classes = []
        for offloaded in (False, True):
            for streamed in (False, True):
                lo_kv, hi_kv = (r, L) if offloaded else (0, r)
                lo_w, hi_w = (nw, L) if streamed else (0, nw)
                count = max(0, min(hi_kv, hi_w) - max(lo_kv, lo_w))
                if count:
                    classes.append((count, offloaded, streamed))
        return classes


@dataclass
class LayerTimes:
    """Per-unit times of one decode step at context s (arrays over splits)."""

    weights: float
    act: np.ndarray
    kv: np.ndarray
    recompute: np.ndarray
    gpu_fixed: float  # qkv + attention + mlp of an offloaded unit
    gpu_resident: float
    store: float


def recompute_time(setup: Setup, splits):
    """GPU seconds to recompute K/V of tokens [0, l) in the plan's chunks (as the graph splits them)."""
    splits = np.asarray(splits)
    n = np.minimum(setup.chunks, splits)
    safe_n = np.maximum(n, 1)
    q, rem = splits // safe_n, splits % safe_n
    b = setup.workload.gpu_batch_size

    def one(tokens):
        return work_time(setup.hw, "recompute_kv", shapes.recompute_work(setup.model, b, tokens), setup.p)

    small, large = one(q), one(q + 1)
    return np.where(n > 0, (n - rem) * small + rem * large, 0.0)


def act_copy_time(setup: Setup, splits):
    """H2D seconds for the activations of tokens [0, l), one copy per chunk."""
    splits = np.asarray(splits)
    n = np.minimum(setup.chunks, splits)
    link = setup.hw.h2d
    total_bytes = shapes.act_bytes(setup.model, setup.workload.gpu_batch_size, splits, setup.p)
    return np.where(n > 0, n * link.latency_s + total_bytes / link.bandwidth_Bps, 0.0)


def layer_times(setup: Setup, step, splits) -> LayerTimes:
    model, hw, p, wl = setup.model, setup.hw, setup.p, setup.workload
    b = wl.gpu_batch_size
    context = wl.context(step) if np.ndim(step) == 0 else wl.prompt_len + np.asarray(step)
    splits = np.asarray(splits)
    qkv = work_time(hw, "qkv", shapes.qkv_work(model, b, p), p)
    mlp = work_time(hw, "mlp", shapes.mlp_work(model, b, p), p)
    attention = work_time(hw, "attention", shapes.decode_attention_work(model, b, context, p), p)
    # write-back of the new token, as the store policy says
    act_tokens = setup.act_tokens if setup.act_tokens is not None else splits
    kv_from = setup.kv_from if setup.kv_from is not None else splits
    stored = context < wl.stored_tokens
    store = (np.where(stored & (context >= kv_from), copy_time(hw.d2h, shapes.kv_bytes(model, b, 1, p)), 0.0)
             + np.where(stored & (context < act_tokens), copy_time(hw.d2h, shapes.act_bytes(model, b, 1, p)), 0.0))
    return LayerTimes(
        weights=copy_time(hw.h2d, shapes.layer_weight_bytes(model, p)),
        act=act_copy_time(setup, splits),
        kv=copy_time(hw.h2d, shapes.kv_bytes(model, b, np.maximum(context - splits, 0), p)),
        recompute=recompute_time(setup, splits),
        gpu_fixed=qkv + attention + mlp,
        gpu_resident=qkv + attention + mlp,
        store=store,
    )


def sample_time(setup: Setup) -> float:
    """GPU seconds of one step's final norm, LM head and token choice for all GPU batches."""
    one = work_time(setup.hw, "sample", shapes.sample_work(setup.model, setup.workload.gpu_batch_size), setup.p)
    return setup.workload.gpu_batches * one


def in_sequence(weights, unit, gpu_batches: int, column: bool):
    """A layer whose parts run one after another (the paper's form, or lanes that do not overlap):
    its weights load once for all GPU batches in the column schedule, once per batch in the row one."""
    return weights + gpu_batches * unit if column else gpu_batches * (weights + unit)


def layer_sums(setup: Setup, t: LayerTimes, offloaded_only: bool | None = None):
    """(Σ over layers of each layer's steady-state cost, Σ of their GPU time).

    `offloaded_only`: True for the offloaded layers alone, False for the resident ones, None: all.
    """
    G = setup.workload.gpu_batches
    column = setup.schedule == "column"
    serial = not setup.hw.concurrent_lanes
    total, gpu_total = 0.0, 0.0
    for count, offloaded, streamed in setup.layer_classes():
        if offloaded_only is not None and offloaded != offloaded_only:
            continue
        w = t.weights if streamed else 0.0
        if offloaded:
            h2d, gpu, d2h = t.act + t.kv, t.gpu_fixed + t.recompute, t.store
        else:
            h2d, gpu, d2h = 0.0, t.gpu_resident, 0.0
        if setup.variant == "paper":
            unit = t.act + np.maximum(t.recompute, t.kv) + t.gpu_fixed if offloaded else t.gpu_resident
            layer = in_sequence(w, unit, G, column)
        elif serial:
            layer = in_sequence(w, h2d + gpu + d2h, G, column)
        elif column:
            layer = np.maximum(np.maximum(w + G * h2d, G * gpu), G * d2h)
        else:
            layer = G * np.maximum(np.maximum(w + h2d, gpu), d2h)
        total = total + count * layer
        gpu_total = gpu_total + count * G * gpu
    return total, gpu_total


def combine(setup: Setup, t: LayerTimes):
    """Decode step seconds from per-unit times, by schedule and variant.

    Pipelined: the layers cost their steady-state maxima, but the GPU also runs the sample, which
    hides behind the next step's loads when the step is transfer-bound; so a step costs
    max(Σ layer maxima, Σ GPU time + sample). Paper, or lanes that do not overlap: in sequence.
    """
    total, gpu_total = layer_sums(setup, t)
    if setup.variant == "paper" or not setup.hw.concurrent_lanes:
        return total + sample_time(setup)
    return np.maximum(total, gpu_total + sample_time(setup))


def step_times(setup: Setup, splits_per_step) -> np.ndarray:
    """Seconds of each decode step for the given split of each step."""
    steps = np.arange(setup.workload.decode_steps)
    splits = np.minimum(np.asarray(splits_per_step), setup.workload.prompt_len + steps)
    return np.asarray(combine(setup, layer_times(setup, steps, splits)), dtype=float) * np.ones(len(steps))


def sweep(setup: Setup, splits) -> np.ndarray:
    """Mean decode step seconds for each constant split in `splits` (clamped to each step's context)."""
    splits = np.asarray(splits)[None, :]
    steps = np.arange(setup.workload.decode_steps)[:, None]
    clamped = np.minimum(splits, setup.workload.prompt_len + steps)
    times = combine(setup, layer_times(setup, steps, clamped))
    return np.broadcast_to(times, (len(steps), splits.shape[1])).mean(axis=0)


def ttft(setup: Setup) -> float:
    """Seconds to the first token: prefill of every layer and the first sample."""
    model, hw, p, wl = setup.model, setup.hw, setup.p, setup.workload
    b, prompt, G = wl.gpu_batch_size, wl.prompt_len, wl.gpu_batches
    rows = b * prompt
    gpu = (work_time(hw, "qkv", shapes.qkv_work(model, rows, p), p)
           + work_time(hw, "attention", shapes.prefill_attention_work(model, b, prompt), p)
           + work_time(hw, "mlp", shapes.mlp_work(model, rows, p), p))
    act_tokens = setup.act_tokens or 0
    kv_from = setup.kv_from or 0
    stored = min(prompt, wl.stored_tokens)
    store = (copy_time(hw.d2h, shapes.kv_bytes(model, b, max(stored - kv_from, 0), p))
             + copy_time(hw.d2h, shapes.act_bytes(model, b, min(act_tokens, stored), p)))
    weights = copy_time(hw.h2d, shapes.layer_weight_bytes(model, p))
    column = setup.schedule == "column"
    total = 0.0
    for count, offloaded, streamed in setup.layer_classes():
        w = weights if streamed else 0.0
        d2h = store if offloaded else 0.0
        if not hw.concurrent_lanes:
            total += count * (w + (G if column else 1) * (gpu + d2h))
        elif column:
            total += count * max(w, G * gpu, G * d2h)
        else:
            total += count * max(w, gpu, d2h)
    # the first layer's weights load before anything runs, unless every load is counted in line anyway
    fill = weights if setup.weights_gpu_layers == 0 and hw.concurrent_lanes else 0.0
    sample = work_time(hw, "sample", shapes.sample_work(model, b), p)
    return total + fill + (G if column else 1) * sample


def all_first_tokens(setup: Setup) -> float:
    """Seconds until every sequence has its first token. `ttft` is the first GPU batch's; in the row
    schedule the others' prefills come after it (each batch runs through every step before the
    next starts), in the column one `ttft` already covers them all."""
    return ttft(setup) * (setup.workload.gpu_batches if setup.schedule == "row" else 1)


def pcie_bytes_per_step(setup: Setup, splits_per_step) -> float:
    """Mean bytes crossing PCIe per decode step (both directions)."""
    model, wl, p = setup.model, setup.workload, setup.p
    steps = np.arange(wl.decode_steps)
    if len(steps) == 0:
        return 0.0
    context = wl.prompt_len + steps
    splits = np.minimum(np.asarray(splits_per_step), context)
    G, b = wl.gpu_batches, wl.gpu_batch_size
    per_unit = (shapes.act_bytes(model, b, splits, p) + shapes.kv_bytes(model, b, context - splits, p)
                + shapes.kv_bytes(model, b, 1, p) * (context < wl.stored_tokens))
    streamed = model.num_layers - setup.weights_gpu_layers
    weight_loads = streamed * (1 if setup.schedule == "column" else G)
    total = setup.offloaded_layers * G * per_unit + weight_loads * shapes.layer_weight_bytes(model, p)
    return float(np.mean(total))
