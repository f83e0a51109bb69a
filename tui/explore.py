"""What the TUI computes, kept apart from how it is shown, so it can be tested without a terminal.

The screen holds `Inputs` (the same choices `advisor plan` takes) and a split mode: the LP
optimum (`split=None`) or a split forced by the user. `Explorer.plan` builds the plan for them
exactly as `advisor plan` would (same `Request`, same scheduler), so an exported plan equals the
command's output; plans are cached, so moving back and forth over the split costs nothing the
second time. `Explorer.curve` sweeps the optimum's configuration over the whole split range
with the vectorised cost model (the chart), `timeline_copy` makes a short copy of a plan for the
simulated timeline, and `compare_lanes` sets a measured trace against a predicted one per lane.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, replace

import numpy as np

from advisor.catalog import available, load_hardware, load_model
from advisor.costs import Setup, sweep
from advisor.documents import HardwareProfile, ModelSpec, Plan, Trace
from advisor.errors import UserError
from advisor.plans import default_dtype
from advisor.opgraph import PREFILL, parse_op_id
from advisor.planner_cli import build_request
from advisor.scheduler import Request, plan as solve_plan

DEFAULT_MODEL = "opt-6.7b-8k"
DEFAULT_HARDWARE = "h100-pcie5"
LANES = ("h2d", "gpu", "d2h", "cpu")
CURVE_POINTS = 8193  # all splits up to this many; an even subsample beyond
FORCED_POINTS = 17  # scheduler's best plan with the split forced, sampled across the range


@dataclass(frozen=True)
class Inputs:
    """The choices on the left of the screen; `None` means "the scheduler chooses"."""

    model: str = DEFAULT_MODEL
    hardware: str = DEFAULT_HARDWARE
    batch: int = 32
    prompt_len: int = 4096
    gen_len: int = 128
    schedule: str = "row"
    objective: str | None = None
    gpu_batches: int | None = None
    weights_on_gpu: float | None = None
    gpu_kv_budget_gb: float | None = None
    chunks: int | None = None
    cost_model: str = "pipelined"
    dtype: str | None = None

    @property
    def split_step(self) -> int:
        """`{` and `}` move the split by a tenth of the prompt."""
        return max(1, round(self.prompt_len / 10))


def describe_model(spec: ModelSpec) -> str:
    """A short description; a `-Nk` variant is named for the shapes it borrows."""
    match = re.fullmatch(r"(.+)-(\d+)k", spec.name)
    if match:
        return f"{spec.name} ({match.group(1).upper()} shapes, {match.group(2)}k positions)"
    kind = "MHA" if spec.gqa_group == 1 else f"GQA, {spec.gqa_group} query heads per KV head"
    return f"{spec.name} ({spec.num_layers} layers, hidden {spec.hidden}, {kind})"


class Explorer:
    """Model and hardware profiles by name, and a cache of solved plans."""

    def __init__(self, cache_size: int = 4096):
        self.models: dict[str, ModelSpec] = {}
        self.hardware: dict[str, HardwareProfile] = {}
        self.extra_models: dict[str, ModelSpec] = {}  # embedded in a loaded plan
        self.extra_hardware: dict[str, HardwareProfile] = {}
        self._plans: OrderedDict[tuple, Plan | UserError] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size

    # --- profiles -----------------------------------------------------------------------------

    @staticmethod
    def model_names() -> list[str]:
        return sorted({name for _, name, _ in available("models")})

    @staticmethod
    def hardware_names() -> list[str]:
        return sorted({name for _, name, _ in available("hardware")})

    def model(self, name: str) -> ModelSpec:
        if name in self.extra_models:
            return self.extra_models[name]
        if name not in self.models:
            self.models[name] = load_model(name)
        return self.models[name]

    def hw(self, name: str) -> HardwareProfile:
        if name in self.extra_hardware:
            return self.extra_hardware[name]
        if name not in self.hardware:
            self.hardware[name] = load_hardware(name)
        return self.hardware[name]

    def adopt(self, loaded: Plan, label: str) -> Inputs:
        """Inputs reproducing a loaded plan, with its model and hardware registered: its workload and
        its GPU batch count, chunk count and weight placement, so that a split key re-plans that
        configuration (the one a measured trace of it ran) rather than what the scheduler would pick.

        A plan embeds its model and hardware documents; they are used as embedded (under the
        shipped name when identical to the shipped profile, else under `label`).
        """
        model_key = self._register(loaded.model, self.model_names(), self.model, self.extra_models, label)
        hw_key = self._register(loaded.hardware, self.hardware_names(), self.hw, self.extra_hardware, label)
        wl = loaded.workload
        budget = None if wl.gpu_kv_budget_bytes is None else wl.gpu_kv_budget_bytes / 1e9
        return Inputs(model=model_key, hardware=hw_key, batch=wl.batch, prompt_len=wl.prompt_len,
                      gen_len=wl.gen_len, schedule=loaded.schedule, objective=loaded.objective,
                      gpu_batches=wl.gpu_batches, chunks=loaded.chunks,
                      weights_on_gpu=loaded.weights_gpu_layers / loaded.model.num_layers,
                      gpu_kv_budget_gb=budget, cost_model=loaded.cost_model,
                      dtype=None if loaded.dtype == default_dtype(loaded.model, loaded.hardware) else loaded.dtype)

    @staticmethod
    def _register(doc, shipped_names, loader, extras, label) -> str:
        if doc.name in shipped_names:
            try:
                if loader(doc.name) == doc:
                    return doc.name
            except UserError:
                pass
        key = f"{doc.name} ({label})"
        extras[key] = doc
        return key

    # --- plans --------------------------------------------------------------------------------

    def request(self, inputs: Inputs, split: int | None) -> Request:
        """The Request `advisor plan` builds for the same arguments."""
        return build_request(
            self.model(inputs.model), self.hw(inputs.hardware), batch=inputs.batch,
            prompt_len=inputs.prompt_len, gen_len=inputs.gen_len, schedule=inputs.schedule,
            objective=inputs.objective, gpu_batches=inputs.gpu_batches, weights_on_gpu=inputs.weights_on_gpu,
            gpu_kv_budget_gb=inputs.gpu_kv_budget_gb, split=split, chunks=inputs.chunks,
            cost_model=inputs.cost_model, dtype=inputs.dtype,
        )

    def plan(self, inputs: Inputs, split: int | None) -> Plan:
        """The scheduler's plan: the LP optimum (`split=None`) or its best with `split` forced.

        Raises UserError (also cached) when the inputs are refused or the plan cannot fit.
        """
        key = (inputs, split)
        with self._lock:
            hit = self._plans.get(key)
            if hit is not None:
                self._plans.move_to_end(key)
        if hit is None:
            try:
                hit = solve_plan(self.request(inputs, split))
            except UserError as error:
                hit = error
            except Exception as error:  # a bug, but the screen must stay up to say so
                hit = UserError(f"internal error while planning ({type(error).__name__}: {error}); "
                                f"please report it with these inputs")
            with self._lock:
                self._plans[key] = hit
                while len(self._plans) > self.cache_size:
                    self._plans.popitem(last=False)
        if isinstance(hit, UserError):
            raise hit
        return hit

    def cached(self, inputs: Inputs, split: int | None) -> bool:
        return (inputs, split) in self._plans

    # --- the chart ----------------------------------------------------------------------------

    def curve(self, optimum: Plan) -> "Curve | None":
        """Mean decode step time over the split range for the optimum's configuration."""
        if not optimum.offload or not optimum.workload.decode_steps:
            return None
        wl = optimum.workload
        setup = replace(Setup.from_plan(optimum), act_tokens=None, kv_from=None)
        top = wl.prompt_len
        if top + 1 <= CURVE_POINTS:
            splits = np.arange(top + 1)
        else:
            splits = np.unique(np.linspace(0, top, CURVE_POINTS).round().astype(int))
        step_s = np.asarray(sweep(setup, splits), dtype=float)
        return Curve(splits=splits, step_s=step_s, batch=wl.batch)

    def forced_points(self, inputs: Inputs, cancelled=lambda: False) -> list[tuple[int, float | None]]:
        """The scheduler's step time with the split forced, at evenly spaced splits (None: no plan)."""
        splits = sorted(set(np.linspace(0, inputs.prompt_len, FORCED_POINTS).round().astype(int).tolist()))
        points = []
        for split in splits:
            if cancelled():
                break
            try:
                p = self.plan(inputs, split)
                points.append((split, p.predicted.decode_step_s if p.predicted else None))
            except UserError:
                points.append((split, None))
        return points


@dataclass
class Curve:
    splits: np.ndarray
    step_s: np.ndarray
    batch: int

    @property
    def tokens_per_s(self) -> np.ndarray:
        return self.batch / np.maximum(self.step_s, 1e-30)

    def best_split(self) -> int:
        return int(self.splits[int(np.argmin(self.step_s))])


def current_split(p: Plan) -> int:
    """The split shown as "current": the first decode step's (the LP may re-plan per step)."""
    return p.splits[0] if p.splits else 0


# ---------------------------------------------------------------------------------------------
# Timeline and measured traces
# ---------------------------------------------------------------------------------------------

TIMELINE_GEN_LEN = 4  # decode steps 0, 1, 2: step 1 is shown (after prefill's tail, before the end)


def timeline_copy(p: Plan, gen_len: int = TIMELINE_GEN_LEN) -> tuple[Plan, int]:
    """A short copy of `p` (same choices, `gen_len` new tokens) and the decode step to show."""
    steps = gen_len - 1
    if p.workload.decode_steps > steps:
        wl = p.workload.model_copy(update={"gen_len": gen_len})
        p = p.model_copy(update={"workload": wl, "splits": list(p.splits[:steps]), "predicted": None})
    return p, max(0, min(p.workload.decode_steps // 2, p.workload.decode_steps - 1))


def step_window(trace: Trace, step: int, batch: int | None = None) -> tuple[float, float] | None:
    """(start, end) of decode step `step`: from the previous step's last sample to its own (of GPU
    batch `batch`; of all when None)."""
    ends: dict[int, float] = {}
    for r in trace.records:
        if r.id.endswith(".sample"):
            s, _, b, _, _ = parse_op_id(r.id)
            if batch in (None, b):
                ends[s] = max(ends.get(s, -np.inf), r.end_s)
    prev = PREFILL if step == 0 else step - 1
    if step not in ends or prev not in ends:
        return None
    return ends[prev], ends[step]


def gpu_waits(trace: Trace, step: int, batch: int | None = None) -> tuple[float, float, float] | None:
    """(step seconds, GPU idle seconds, longest GPU idle gap) within decode step `step` (of GPU
    batch `batch`; of all when None)."""
    window = step_window(trace, step, batch)
    if window is None:
        return None
    start, end = window
    spans = sorted((max(r.start_s, start), min(r.end_s, end)) for r in trace.records
                   if r.lane == "gpu" and r.end_s > start and r.start_s < end)
    busy, longest, cursor = 0.0, 0.0, start
    for s, e in spans:
        if s > cursor:
            longest = max(longest, s - cursor)
        if e > cursor:
            busy += e - max(s, cursor)
            cursor = e
    longest = max(longest, end - cursor)
    return end - start, (end - start) - busy, longest


def lane_busy_per_step(trace: Trace, skip_steps: int = 0) -> dict[str, float]:
    """Mean busy seconds per decode step on each lane (decode steps from `skip_steps` on)."""
    per: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    steps: set[int] = set()
    for r in trace.records:
        try:
            step = parse_op_id(r.id)[0]
        except (ValueError, IndexError):
            continue
        if step == PREFILL or step < skip_steps:
            continue
        steps.add(step)
        per[r.lane][step] += r.end_s - r.start_s
    if not steps:
        return {}
    return {lane: sum(by_step.values()) / len(steps) for lane, by_step in per.items()}


@dataclass
class LaneRow:
    name: str
    predicted_s: float | None
    measured_s: float | None

    @property
    def error(self) -> float | None:
        """(predicted − measured) / measured."""
        if self.predicted_s is None or not self.measured_s:
            return None
        return (self.predicted_s - self.measured_s) / self.measured_s


def compare_lanes(predicted: Trace, measured: Trace) -> list[LaneRow]:
    """Per lane busy time per decode step, then decode step time and TTFT."""
    skip = measured.summary.warmup_steps_excluded
    pred = lane_busy_per_step(predicted, skip)
    meas = lane_busy_per_step(measured, skip)
    rows = [LaneRow(f"{lane} busy / step", pred.get(lane), meas.get(lane))
            for lane in LANES if lane in pred or lane in meas]
    times = predicted.summary.step_times_s[skip:] or predicted.summary.step_times_s
    pred_step = sum(times) / len(times) if times else predicted.summary.decode_step_s
    rows.append(LaneRow("decode step", pred_step, measured.summary.decode_step_s))
    rows.append(LaneRow("TTFT", predicted.summary.ttft_s, measured.summary.ttft_s))
    return rows
