"""`advisor calibrate`: refit a hardware profile's parameters from measured traces.

Calibration does not keep a model of its own: it fits the parameters of `advisor.timemodel` (the
time model the cost model and the simulator use) so that `op_duration` reproduces the measured
durations, by least squares, and it checks the result with `op_duration` itself.

- Copies, per direction: the copies that ran while the other direction was idle are fitted to
  `latency + bytes / bandwidth` (`advisor.fitting`, relative least squares over the median time
  of each size). Copies that ran mostly while the other direction was busy give the
  bidirectional share: the simulator moves a copy's bytes at `min(own, total / 2)` while both
  directions are busy, so `total = 2 × (bytes − own·(time alone)) / (time shared)`.
- GPU work: an operation takes `Σ max(flops / rate(M), operand bytes / memory-bound rate)` over
  its GEMMs, plus its bytes over the attention or memory-bound rate, plus a launch overhead per
  kernel. The unknowns are the GEMM rates at every (N, K, M) the traces sample (one curve per
  weight shape), the attention and memory-bound rates and the launch overhead; they are fitted on
  the median time of each distinct operation (same kind, GEMMs, bytes and kernels) by
  Levenberg–Marquardt on log-parameters (so they stay positive), on relative errors, with a weak
  pull towards the input profile so that what the traces cannot tell apart stays where it was.
  The max() is approached through smooth maxima of growing sharpness, so a GEMM can move from
  memory-bound to compute-bound during the fit. Points of a curve that the traces did not sample
  are scaled by the fitted change at the nearest sampled M (interpolated in log M).

Warm-up decode steps (the trace's `summary.warmup_steps_excluded`) are left out. The profile
records which runs it was calibrated from (`provenance.calibrated_from`).

Each measured trace needs its plan: `--plan` (one per trace, or one for all), else the plan the
trace names in `extra['plan_path']` (what `advisor execute` records), else `<measured>.plan.json`
beside it. A trace of another plan, of another device kind, or an empty one is refused in one line.
"""

from __future__ import annotations

import datetime
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advisor import timemodel
from advisor.compare import check_device, check_trace, durations, plan_beside
from advisor.documents import (
    CopyModel,
    CopyPoint,
    GemmCurve,
    HardwareProfile,
    Plan,
    RatePoint,
    Trace,
    check_distinct,
    check_writable,
    load_document,
    write_document,
)
from advisor.errors import UserError
from advisor.fitting import fit_latency_bandwidth
from advisor.opgraph import PREFILL, OpGraph, Operation

COPY_LANES = ("h2d", "d2h")
ALONE_OVERLAP = 0.02  # a copy counts as alone when the other direction was busy < 2% of its time
SHARED_OVERLAP = 0.5  # ... and as shared when busy for at least half of its transfer
PRIOR_WEIGHT = 1e-3  # pull of the input profile: weight of (x / x_prior − 1)² per parameter
LOG_PULL = 1e-4  # and of its log-change, weight LOG_PULL²
MOVE_LIMIT = 100.0  # no parameter moves further than this factor from the input profile in one calibration
PEAK_LIMIT = 10.0  # no GEMM rate above this many times the profile's fastest, no byte rate above its fastest
MAX_COPY_POINTS = 48


# ---------------------------------------------------------------------------------------------
# Runs: a measured trace with its plan
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    plan: Plan
    trace: Trace
    graph: OpGraph

    @property
    def label(self) -> str:
        return f"{self.name} (plan {self.trace.plan_fingerprint})"


def make_run(name: str, plan: Plan, trace: Trace, hw: HardwareProfile | None = None,
             plan_where: str = "the plan") -> Run:
    """A checked run: the trace belongs to the plan and, if given, to the profile's device kind."""
    graph = check_trace(plan, trace, name, plan_where=plan_where)
    if hw is not None:
        check_device(hw, trace, name)
    return Run(name, plan, trace, graph)


def load_runs(measured: list[str], plans: list[str] | None, hw: HardwareProfile) -> list[Run]:
    """Each measured trace with its plan (see the module's docstring for where plans come from)."""
    if plans and len(plans) not in (1, len(measured)):
        raise UserError(f"--plan given {len(plans)} times for {len(measured)} measured traces: "
                        "give one plan for all of them, or one per trace in the same order")
    runs = []
    loaded: dict[str, Plan] = {}
    for i, path in enumerate(measured):
        trace = load_document(Trace, path)
        if plans:
            plan_path = Path(plans[0] if len(plans) == 1 else plans[i])
        else:
            found = plan_beside(path, trace)
            if found is None:
                stem = Path(path).name.removesuffix(".json")
                raise UserError(f"{path}: which plan was executed? give --plan PLAN (one per trace), or keep "
                                f"it beside the trace as {stem}.plan.json")
            plan_path = found
        key = str(plan_path)
        if key not in loaded:
            loaded[key] = load_document(Plan, plan_path)
        runs.append(make_run(str(path), loaded[key], trace, hw, plan_where=str(plan_path)))
    return runs


def _counted(run: Run, serial: bool):
    """(operation, measured seconds, record) of a run, warm-up decode steps left out.

    On a serial device an operation's time includes the host's gap before it (`compare.durations`).
    """
    warmup = run.trace.summary.warmup_steps_excluded
    ops = run.graph.by_id()
    seconds = durations(run.trace, serial)
    for record in run.trace.records:
        op = ops[record.id]
        if op.step != PREFILL and op.step < warmup:
            continue
        yield op, seconds[record.id], record


# ---------------------------------------------------------------------------------------------
# Copies
# ---------------------------------------------------------------------------------------------


def _busy_intervals(records) -> np.ndarray:
    """Merged [start, end] intervals of a lane."""
    spans = sorted((r.start_s, r.end_s) for r in records)
    merged: list[list[float]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return np.array(merged, dtype=float).reshape(-1, 2)


def _overlap(intervals: np.ndarray, start: float, end: float) -> float:
    """Seconds of [start, end] covered by the merged, sorted `intervals`."""
    if end <= start or len(intervals) == 0:
        return 0.0
    lo = np.searchsorted(intervals[:, 1], start, side="right")
    hi = np.searchsorted(intervals[:, 0], end, side="left")
    if hi <= lo:
        return 0.0
    seg = intervals[lo:hi]
    return float(np.sum(np.minimum(seg[:, 1], end) - np.maximum(seg[:, 0], start)).clip(min=0.0))


@dataclass
class CopySample:
    lane: str
    nbytes: int
    seconds: float
    start_s: float
    end_s: float
    other_busy: np.ndarray | None = None  # the other direction's merged busy intervals

    @property
    def overlap_s(self) -> float:
        """Time the other direction was busy during this copy."""
        return self.shared_s(0.0)

    def shared_s(self, latency_s: float) -> float:
        """Time the other direction was busy while this copy moved bytes: after its latency, which
        no sharing stretches (counting it as shared made the fitted total too high)."""
        if self.other_busy is None:
            return 0.0
        return _overlap(self.other_busy, self.start_s + latency_s, self.end_s)


def copy_samples(runs: list[Run], overlapping: bool) -> list[CopySample]:
    samples = []
    for run in runs:
        lanes = {lane: [] for lane in COPY_LANES}
        if overlapping:
            by_lane: dict[str, list] = defaultdict(list)
            for r in run.trace.records:
                by_lane[r.lane].append(r)
            busy = {lane: _busy_intervals(by_lane[lane]) for lane in COPY_LANES}
        for op, seconds, record in _counted(run, not overlapping):
            if op.lane not in COPY_LANES or op.bytes <= 0 or seconds <= 0:
                continue
            other = "d2h" if op.lane == "h2d" else "h2d"
            lanes[op.lane].append(CopySample(op.lane, op.bytes, seconds, record.start_s, record.end_s,
                                             busy[other] if overlapping else None))
        for lane in COPY_LANES:
            samples += lanes[lane]
    return samples


def _median_by_size(samples: list[CopySample]) -> list[tuple[int, float, int]]:
    by_size: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        by_size[s.nbytes].append(s.seconds)
    return [(size, statistics.median(times), len(times)) for size, times in sorted(by_size.items())]


def _thin(points: list[tuple[int, float, int]], limit: int) -> list[tuple[int, float, int]]:
    """At most `limit` points, evenly spread in log size (the fit uses them all)."""
    if len(points) <= limit:
        return points
    picks = np.unique(np.round(np.linspace(0, len(points) - 1, limit)).astype(int))
    return [points[i] for i in picks]


def fit_direction(prior: CopyModel, samples: list[CopySample]) -> tuple[CopyModel, str]:
    """The direction's latency and bandwidth from copies that ran alone."""
    points = _median_by_size(samples)
    if not points:
        return prior, "no copy ran alone: kept"
    sizes = [p[0] for p in points]
    seconds = [p[1] for p in points]
    if len(points) >= 2 and max(sizes) >= 2 * min(sizes):
        latency, bandwidth = fit_latency_bandwidth(sizes, seconds)
        how = f"fitted to {len(points)} sizes ({sum(p[2] for p in points)} copies)"
    else:
        # one size: keep the profile's latency unless it would leave no time for the bytes
        size, t = sizes[-1], seconds[-1]
        latency = prior.latency_s if prior.latency_s < 0.5 * t else 0.0
        bandwidth = size / (t - latency)
        how = f"bandwidth from one size ({size} bytes), latency kept"
    kept = _thin(points, MAX_COPY_POINTS)
    model = CopyModel(latency_s=latency, bandwidth_Bps=bandwidth,
                      points=[CopyPoint(bytes=int(s), seconds=float(t)) for s, t, _ in kept])
    return model, how


def fit_bidirectional(prior: float | None, samples: list[CopySample], models: dict[str, CopyModel]
                      ) -> tuple[float | None, str]:
    """The total of both directions from copies that ran mostly while the other one was busy."""
    totals = []
    for s in samples:
        model = models[s.lane]
        transfer = s.seconds - model.latency_s
        shared = min(s.shared_s(model.latency_s), transfer)
        if transfer < 0.5 * s.seconds or shared < SHARED_OVERLAP * transfer:
            continue  # latency-bound copies say little about bandwidth
        alone = transfer - shared
        rate = (s.nbytes - model.bandwidth_Bps * alone) / shared
        if rate > 0:
            totals.append(2.0 * rate)
    if len(totals) < 3:
        return prior, "too few copies overlapped the other direction: kept"
    total = float(statistics.median(totals))
    lowest_own = min(m.bandwidth_Bps for m in models.values())
    if total >= 1.97 * lowest_own:
        return None, f"no slowdown seen over {len(totals)} overlapped copies: directions do not interfere"
    return total, f"median of {len(totals)} overlapped copies"


# ---------------------------------------------------------------------------------------------
# GPU work
# ---------------------------------------------------------------------------------------------


@dataclass
class Observation:
    """One distinct GPU operation: its work and the median of its measured times."""

    op: Operation
    p: int
    seconds: float
    count: int


def gpu_observations(runs: list[Run], serial: bool) -> list[Observation]:
    groups: dict[tuple, list[float]] = defaultdict(list)
    example: dict[tuple, tuple[Operation, int]] = {}
    for run in runs:
        p = run.graph.dtype_bytes
        for op, seconds, _ in _counted(run, serial):
            if op.lane in COPY_LANES or seconds <= 0:
                continue
            key = (op.kind, op.bytes, op.kernels, tuple(op.gemms), p)
            groups[key].append(seconds)
            example.setdefault(key, (op, p))
    return [Observation(example[key][0], example[key][1], float(statistics.median(times)), len(times))
            for key, times in groups.items()]


class GpuFit:
    """The GPU part of the time model as a function of its parameters, and its least-squares fit.

    Parameters, all positive: x[0] launch overhead (s), x[1] 1 / memory-bound rate, x[2] 1 /
    attention rate, then 1 / rate for every (N, K, M) a GEMM of the observations has. Given x,
    an operation's time is exactly `timemodel.gpu_time` on the profile `profile(x)` builds.
    """

    LAUNCH, MEMORY, ATTENTION = 0, 1, 2

    def __init__(self, hw: HardwareProfile, observations: list[Observation]):
        self.hw = hw
        self.obs = observations
        self.keys: list[tuple[int, int, int]] = []  # (n, k, m) of each GEMM-rate parameter
        index: dict[tuple[int, int, int], int] = {}
        g_row, g_par, g_flops, g_bytes = [], [], [], []
        l_row, l_par, l_coef = [], [], []
        for i, o in enumerate(observations):
            for (m, n, k) in o.op.gemms:
                if m <= 0:
                    continue
                key = (n, k, m)
                if key not in index:
                    index[key] = 3 + len(self.keys)
                    self.keys.append(key)
                g_row.append(i)
                g_par.append(index[key])
                g_flops.append(2.0 * m * n * k)
                g_bytes.append(float((n * k + m * k + m * n) * o.p))
            if o.op.bytes:
                l_row.append(i)
                l_par.append(self.ATTENTION if o.op.kind == "attention" else self.MEMORY)
                l_coef.append(float(o.op.bytes))
            if o.op.kernels:
                l_row.append(i)
                l_par.append(self.LAUNCH)
                l_coef.append(float(o.op.kernels))
        self.g_row, self.g_par = np.array(g_row, dtype=int), np.array(g_par, dtype=int)
        self.g_flops, self.g_bytes = np.array(g_flops), np.array(g_bytes)
        self.l_row, self.l_par = np.array(l_row, dtype=int), np.array(l_par, dtype=int)
        self.l_coef = np.array(l_coef)
        self.y = np.array([o.seconds for o in observations])
        self.w = np.sqrt(np.array([o.count for o in observations], dtype=float))
        self.n = 3 + len(self.keys)

    def prior(self) -> np.ndarray:
        hw = self.hw
        x = np.empty(self.n)
        x[self.LAUNCH] = max(hw.launch_overhead_s, 1e-9)
        x[self.MEMORY] = 1.0 / hw.memory_bound_Bps
        x[self.ATTENTION] = 1.0 / hw.attention_Bps
        for j, (n, k, m) in enumerate(self.keys):
            x[3 + j] = 1.0 / timemodel.curve_for(hw, n, k).at(m)
        return x

    def predict(self, x: np.ndarray, sharpness: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(predicted seconds per observation, d prediction / d log x as a dense matrix)."""
        G = len(self.obs)
        a = self.g_flops * x[self.g_par]
        b = self.g_bytes * x[self.MEMORY]
        if sharpness is None:
            s = np.maximum(a, b)
            da, db = np.where(a >= b, a, 0.0), np.where(a >= b, 0.0, b)
        else:
            top = np.maximum(a, b)
            ra, rb = a / top, b / top
            s = top * (ra**sharpness + rb**sharpness) ** (1.0 / sharpness)
            da = a * (a / s) ** (sharpness - 1)
            db = b * (b / s) ** (sharpness - 1)
        lin = self.l_coef * x[self.l_par]
        pred = np.bincount(self.g_row, s, G) + np.bincount(self.l_row, lin, G)
        jac = np.zeros((G, self.n))
        np.add.at(jac, (self.g_row, self.g_par), da)
        np.add.at(jac, (self.g_row, np.full_like(self.g_row, self.MEMORY)), db)
        np.add.at(jac, (self.l_row, self.l_par), lin)
        return pred, jac

    def _levenberg_marquardt(self, theta: np.ndarray, theta0: np.ndarray, sharpness: float | None,
                             iterations: int = 300) -> np.ndarray:
        """Minimise Σ w²(log predicted − log measured)² + λ Σ (x / x_prior − 1)² over θ = log x.

        The pull towards the prior is on relative change of each time coefficient, so time that
        only a sum of parameters explains (two GEMMs always run together) is shared in proportion
        to their prior times, as a min-norm solution, instead of arbitrarily.
        """
        root = math.sqrt(PRIOR_WEIGHT)
        logy = np.log(self.y)

        def parts(t):
            pred, jac = self.predict(np.exp(t), sharpness)
            r = self.w * (np.log(pred) - logy)
            J = (self.w / pred)[:, None] * jac
            # relative change of each coefficient, plus a far weaker pull on its logarithm so that
            # a parameter the data do not hold cannot drift to zero or infinity
            ratio = np.exp(t - theta0)
            rp = np.concatenate([root * (ratio - 1.0), LOG_PULL * (t - theta0)])
            Jp = np.concatenate([root * ratio, np.full(self.n, LOG_PULL)])
            return float(r @ r + rp @ rp), r, J, rp, Jp

        cost, r, J, rp, Jp = parts(theta)
        mu = 1e-3
        for _ in range(iterations):
            n = self.n
            A = J.T @ J + np.diag(Jp[:n] ** 2 + Jp[n:] ** 2)
            g = J.T @ r + Jp[:n] * rp[:n] + Jp[n:] * rp[n:]
            accepted = False
            for _ in range(16):
                step = np.linalg.lstsq(A + mu * np.diag(np.diag(A)), -g, rcond=None)[0]
                step = np.clip(step, -2.0, 2.0)
                trial = np.clip(theta + step, self.low, self.high)
                step = trial - theta
                new = parts(trial)
                if new[0] < cost:
                    accepted = True
                    improvement = cost - new[0]
                    theta, (cost, r, J, rp, Jp) = trial, new
                    mu = max(mu / 4, 1e-12)
                    break
                mu *= 4
            if not accepted or np.max(np.abs(step)) < 1e-8 or improvement < 1e-14 * cost:
                break
        return theta

    def bounds(self, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of θ = log x: within MOVE_LIMIT of the prior, and no rate beyond PEAK_LIMIT
        times the profile's fastest of its kind (where the traces cannot tell, e.g. a GEMM hidden
        behind a kernel's launch overhead, the fit must not invent a machine)."""
        hw = self.hw
        low = np.log(x0 / MOVE_LIMIT)
        high = np.log(x0 * MOVE_LIMIT)
        peak_gemm = max(p.flops for c in hw.gemm for p in c.points)
        peak_bytes = max(hw.memory_bound_Bps, hw.attention_Bps)
        floor = np.full(self.n, -np.inf)
        floor[self.MEMORY] = floor[self.ATTENTION] = -math.log(PEAK_LIMIT * peak_bytes)
        floor[3:] = -math.log(PEAK_LIMIT * peak_gemm)
        return np.maximum(low, np.minimum(floor, high)), high

    def at_limit(self, x: np.ndarray) -> list[str]:
        """The parameters `solve` left on a bound of `bounds` (the data could not hold them)."""
        theta = np.log(x)
        held = np.isclose(theta, self.low, rtol=0, atol=1e-6) | np.isclose(theta, self.high, rtol=0, atol=1e-6)
        names = {self.LAUNCH: "launch overhead", self.MEMORY: "memory-bound rate", self.ATTENTION: "attention rate"}
        found = [names[i] for i in sorted(names) if held[i]]
        gemms = int(held[3:].sum())
        return found + ([f"{gemms} GEMM rate(s)"] if gemms else [])

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        """(fitted x, how strongly the data pin each parameter: diag(JᵀJ) / prior weight)."""
        x0 = self.prior()
        theta0 = np.log(x0)
        theta = theta0.copy()
        self.low, self.high = self.bounds(x0)
        for sharpness in (1.0, 2.0, 4.0, 8.0, 16.0, 64.0, None):
            theta = self._levenberg_marquardt(theta, theta0, sharpness)
        pred, jac = self.predict(np.exp(theta))
        J = (self.w / pred)[:, None] * jac
        return np.exp(theta), np.sum(J * J, axis=0) / PRIOR_WEIGHT

    # --- parameters → profile --------------------------------------------------------------

    def curves(self, x: np.ndarray) -> list[GemmCurve]:
        """The profile's curves with every sampled shape fitted at its sampled M."""
        hw = self.hw
        sampled: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        for j, (n, k, m) in enumerate(self.keys):
            sampled[(n, k)][m] = 1.0 / x[3 + j]
        curves = {(c.n, c.k): c for c in hw.gemm}
        out: dict[tuple[int, int], GemmCurve] = dict(curves)
        for (n, k), fitted in sampled.items():
            prior_curve = curves.get((n, k))
            prior_points = prior_curve.points if prior_curve else timemodel.nearest_curve(hw, n, k).points
            ms = np.array(sorted(fitted))
            prior_at = timemodel.curve_for(hw, n, k)
            factors = np.array([fitted[m] / prior_at.at(int(m)) for m in ms])
            points = {int(m): fitted[int(m)] for m in ms}
            for p in prior_points:
                if p.m not in points:
                    factor = float(np.interp(math.log(p.m), np.log(ms), factors))
                    points[p.m] = p.flops * factor
            out[(n, k)] = GemmCurve(n=n, k=k, points=[RatePoint(m=m, flops=r) for m, r in sorted(points.items())])
        return list(out.values())



# ---------------------------------------------------------------------------------------------
# The whole calibration
# ---------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    profile: HardwareProfile
    lines: list[str]
    error_before_pct: float | None = None  # median |op_duration − measured| / measured over the runs
    error_after_pct: float | None = None
    pinned: dict[str, float] = field(default_factory=dict)  # parameter → data strength


def model_errors(hw: HardwareProfile, runs: list[Run], samples: list[CopySample] | None = None) -> list[float]:
    """|op_duration − measured| / measured (%) for GPU operations and for copies that ran alone."""
    errors = []
    overlapping = hw.concurrent_lanes
    for run in runs:
        p = run.graph.dtype_bytes
        for op, seconds, record in _counted(run, not overlapping):
            if seconds <= 0:
                continue
            if op.lane in COPY_LANES and overlapping:
                continue  # copies that shared the link: judged below, on the ones that ran alone
            errors.append(abs(timemodel.op_duration(hw, op, p) - seconds) / seconds * 100)
    if samples and overlapping:
        for s in samples:
            if s.overlap_s <= ALONE_OVERLAP * s.seconds:
                model = hw.h2d if s.lane == "h2d" else hw.d2h
                errors.append(abs(timemodel.copy_time(model, s.nbytes) - s.seconds) / s.seconds * 100)
    return errors


def calibrate(hw: HardwareProfile, runs: list[Run], name: str | None = None) -> Calibration:
    """A copy of `hw` with its time-model parameters refitted to the measured runs."""
    if not runs:
        raise UserError("no measured traces to calibrate from")
    for run in runs:
        check_device(hw, run.trace, run.name)
    overlapping = hw.concurrent_lanes
    lines = []

    # copies
    samples = copy_samples(runs, overlapping)
    models, notes = {}, {}
    for lane in COPY_LANES:
        prior = hw.h2d if lane == "h2d" else hw.d2h
        alone = [s for s in samples if s.lane == lane and s.overlap_s <= ALONE_OVERLAP * s.seconds]
        models[lane], notes[lane] = fit_direction(prior, alone)
    bidirectional, bidi_note = hw.bidirectional_total_Bps, "lanes do not overlap on this device: kept"
    if overlapping:
        bidirectional, bidi_note = fit_bidirectional(hw.bidirectional_total_Bps, samples, models)

    # GPU work
    observations = gpu_observations(runs, not overlapping)
    if not samples and not observations:
        raise UserError("no operation of the traces took any time (every record ends where it starts): "
                        "nothing to fit, no profile written")
    update: dict = {"h2d": models["h2d"], "d2h": models["d2h"], "bidirectional_total_Bps": bidirectional}
    pinned: dict[str, float] = {}
    at_limit: list[str] = []
    if observations:
        fit = GpuFit(hw, observations)
        x, strength = fit.solve()
        at_limit = fit.at_limit(x)
        update.update(
            launch_overhead_s=float(x[GpuFit.LAUNCH]),
            memory_bound_Bps=float(1.0 / x[GpuFit.MEMORY]),
            attention_Bps=float(1.0 / x[GpuFit.ATTENTION]),
            gemm=fit.curves(x),
        )
        pinned = {"launch_overhead_s": float(strength[0]), "memory_bound_Bps": float(strength[1]),
                  "attention_Bps": float(strength[2])}
        for j, key in enumerate(fit.keys):
            pinned[f"gemm n={key[0]} k={key[1]} m={key[2]}"] = float(strength[3 + j])

    used = [run.label for run in runs]
    provenance = hw.provenance.model_copy(deep=True)
    provenance.calibrated_from = list(dict.fromkeys(provenance.calibrated_from + used))
    provenance.date = datetime.date.today().isoformat()
    provenance.sources = dict(provenance.sources)
    provenance.sources["calibration"] = (
        f"advisor calibrate {provenance.date}: least squares on {len(runs)} run(s), "
        f"{len(observations)} distinct GPU operations, {len(samples)} copies; warm-up steps left out"
    )
    update["provenance"] = provenance
    update["name"] = name or default_name(hw)
    # validated again as a document: every fitted figure must satisfy the profile's constraints
    profile = HardwareProfile.model_validate(hw.model_copy(update=update).model_dump())

    before = model_errors(hw, runs, samples)
    after = model_errors(profile, runs, samples)
    result = Calibration(profile, lines, pinned=pinned,
                         error_before_pct=statistics.median(before) if before else None,
                         error_after_pct=statistics.median(after) if after else None)
    lines += _describe(hw, profile, notes, bidi_note, result, runs)
    if at_limit:
        lines.append(f"  note: {', '.join(at_limit)} stopped at the limit of one calibration (×{MOVE_LIMIT:g} from the "
                     f"input, or ×{PEAK_LIMIT:g} its fastest rate): these traces cannot pin them (operations too small, "
                     "or hidden behind launch overhead); calibrate from larger workloads before trusting them")
    return result


def _describe(old: HardwareProfile, new: HardwareProfile, notes: dict[str, str], bidi_note: str,
              result: Calibration, runs: list[Run]) -> list[str]:
    def gbps(v):
        return "none" if v is None else f"{v / 1e9:.2f} GB/s"

    lines = [f"calibrated {old.name} → {new.name} from {len(runs)} run(s): "
             + ", ".join(Path(r.name).name for r in runs)]
    for lane in COPY_LANES:
        o, n = getattr(old, lane), getattr(new, lane)
        lines.append(f"  {lane}: latency {o.latency_s * 1e6:.2f} → {n.latency_s * 1e6:.2f} µs, bandwidth "
                     f"{gbps(o.bandwidth_Bps)} → {gbps(n.bandwidth_Bps)} ({notes[lane]})")
    lines.append(f"  both directions: {gbps(old.bidirectional_total_Bps)} → {gbps(new.bidirectional_total_Bps)} "
                 f"({bidi_note})")
    lines.append(f"  attention {gbps(old.attention_Bps)} → {gbps(new.attention_Bps)}, memory-bound "
                 f"{gbps(old.memory_bound_Bps)} → {gbps(new.memory_bound_Bps)}, launch overhead "
                 f"{old.launch_overhead_s * 1e6:.2f} → {new.launch_overhead_s * 1e6:.2f} µs")
    old_curves = {(c.n, c.k) for c in old.gemm}
    changed = [c for c in new.gemm if (c.n, c.k) not in old_curves or c != next(
        (o for o in old.gemm if (o.n, o.k) == (c.n, c.k)), None)]
    for c in changed[:8]:
        rates = ", ".join(f"M={p.m}: {p.flops / 1e12:.3g}" for p in c.points[:6])
        lines.append(f"  GEMM ({c.n} × {c.k}) TFLOP/s: {rates}{' …' if len(c.points) > 6 else ''}")
    if len(changed) > 8:
        lines.append(f"  … {len(changed) - 8} more GEMM curves")
    if result.error_before_pct is not None:
        lines.append(f"  median |model − measured| per operation: {result.error_before_pct:.1f}% → "
                     f"{result.error_after_pct:.1f}%")
    return lines


def default_name(hw: HardwareProfile) -> str:
    return hw.name if hw.name.endswith("-calibrated") else f"{hw.name}-calibrated"


def calibrate_run(plan: Plan, trace: Trace, output: str, trace_name: str = "this run",
                  hardware: HardwareProfile | None = None) -> Calibration:
    """Calibrate from one run just measured (what `advisor execute --calibrate OUT` calls).

    The prior is `hardware`, else the plan's own profile; the result is written to `output`.
    """
    hw = hardware or plan.hardware
    run = make_run(trace_name, plan, trace, hw)
    result = calibrate(hw, [run])
    try:
        write_document(output, result.profile)
    except OSError as error:
        raise UserError(f"{output}: cannot write: {error.strerror or error}") from None
    return result


def cmd_calibrate(args) -> int:
    from advisor.catalog import load_hardware

    check_writable(args.output)
    # -o over --hardware refits that profile in place, as asked; over a trace or plan it destroys one
    check_distinct({"a measured trace": args.measured, "--plan": args.plan}, {"-o": args.output})
    hw = load_hardware(args.hardware)
    runs = load_runs(args.measured, args.plan, hw)
    result = calibrate(hw, runs)
    try:
        write_document(args.output, result.profile)
    except OSError as error:
        raise UserError(f"{args.output}: cannot write: {error.strerror or error}") from None
    for line in result.lines:
        print(line)
    print(f"wrote {args.output}")
    return 0
