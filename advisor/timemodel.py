"""How long one copy or one kernel takes on a profiled machine (DESIGN §3 time models).

Copies: `latency + bytes / bandwidth` per direction (the fitted points already include the
latency). GEMMs: the profile's rate curve for the weight shape, interpolated in log M and clamped
at its ends, never faster than moving the operands at the memory-bound rate. Attention and other
memory-bound work: bytes over a measured rate. Every kernel adds the launch overhead.

The simulator, the cost model and calibration all call these functions; they accept numpy arrays
wherever a size is expected so the cost model can sweep many splits at once.
"""

from __future__ import annotations

import math

import numpy as np

from advisor.documents import CopyModel, GemmCurve, HardwareProfile
from advisor.errors import UserError

LANE_OF_KIND = {
    "load_weights": "h2d",
    "load_act": "h2d",
    "load_kv": "h2d",
    "store_kv": "d2h",
    "store_act": "d2h",
    "qkv": "gpu",
    "recompute_kv": "gpu",
    "attention": "gpu",
    "mlp": "gpu",
    "sample": "gpu",
}


def copy_time(model: CopyModel, nbytes):
    """Seconds for one copy of `nbytes` (0 for an empty copy)."""
    if isinstance(nbytes, np.ndarray):
        return np.where(nbytes > 0, model.latency_s + nbytes / model.bandwidth_Bps, 0.0)
    return model.latency_s + nbytes / model.bandwidth_Bps if nbytes > 0 else 0.0


def direction(hw: HardwareProfile, lane: str) -> CopyModel:
    return hw.h2d if lane == "h2d" else hw.d2h


class _Curve:
    """A GEMM rate curve prepared for interpolation in log M."""

    __slots__ = ("log_m", "rate", "m_min", "m_max")

    def __init__(self, curve: GemmCurve):
        self.log_m = np.log([p.m for p in curve.points])
        self.rate = np.array([p.flops for p in curve.points])

    def at(self, m):
        if np.ndim(m) == 0:
            return float(np.interp(math.log(max(m, 1)), self.log_m, self.rate))
        return np.interp(np.log(np.maximum(m, 1)), self.log_m, self.rate)


_curve_cache: dict[tuple[int, int, int], tuple[list, _Curve]] = {}


def nearest_curve(hw: HardwareProfile, n: int, k: int) -> GemmCurve:
    """The profile's curve for weight shape (n, k): exact match, else the closest in log K, then log N."""
    if not hw.gemm:
        raise UserError(f"hardware profile {hw.name}: gemm: no GEMM rate curve")
    return min(hw.gemm, key=lambda c: (abs(math.log(c.k / k)), abs(math.log(c.n / n))))


def curve_for(hw: HardwareProfile, n: int, k: int) -> _Curve:
    """`nearest_curve`, prepared for interpolation and cached per profile."""
    key = (id(hw.gemm), n, k)
    cached = _curve_cache.get(key)
    if cached is not None and cached[0] is hw.gemm:  # an id can be reused once a profile is freed
        return cached[1]
    prepared = _Curve(nearest_curve(hw, n, k))
    if len(_curve_cache) > 4096:
        _curve_cache.clear()
    _curve_cache[key] = (hw.gemm, prepared)
    return prepared


def gemm_time(hw: HardwareProfile, m, n: int, k: int, p: int, launch: bool = True):
    """Seconds for an (m × k) · (k × n) GEMM; 0 where m is 0."""
    flops = 2.0 * m * n * k
    rate = curve_for(hw, n, k).at(m)
    operand_bytes = (n * k + m * k + m * n) * p
    seconds = np.maximum(flops / rate, operand_bytes / hw.memory_bound_Bps)
    if launch:
        seconds = seconds + hw.launch_overhead_s
    if np.ndim(m) == 0:
        return float(seconds) if m > 0 else 0.0
    return np.where(np.asarray(m) > 0, seconds, 0.0)


def gpu_time(hw: HardwareProfile, kind: str, gemms, nbytes, kernels: int, p: int) -> float:
    """Seconds for a GPU operation: its GEMMs, its memory-bound bytes, launch overhead per kernel."""
    seconds = sum(gemm_time(hw, m, n, k, p, launch=False) for (m, n, k) in gemms)
    rate = hw.attention_Bps if kind == "attention" else hw.memory_bound_Bps
    return seconds + nbytes / rate + kernels * hw.launch_overhead_s


def op_duration(hw: HardwareProfile, op, p: int) -> float:
    """Seconds for one operation of the graph on its lane, alone (no bidirectional sharing)."""
    if op.lane in ("h2d", "d2h"):
        return copy_time(direction(hw, op.lane), op.bytes)
    return gpu_time(hw, op.kind, op.gemms, op.bytes, op.kernels, p)


def work_time(hw: HardwareProfile, kind: str, work, p: int):
    """Seconds for a GPU operation given as (gemms, bytes, kernels), as `advisor.shapes` returns."""
    gemms, nbytes, kernels = work
    return gpu_time(hw, kind, gemms, nbytes, kernels, p)
