"""Least-squares fits shared by `advisor profile` and `advisor calibrate`.

A copy direction is fitted to `t = latency + bytes / bandwidth` with each point weighted by its
own time, so a 1 MiB copy counts as much as a 1 GiB one (relative, not absolute, error).
"""

from __future__ import annotations

import numpy as np

from advisor.documents import CopyModel, CopyPoint


def fit_latency_bandwidth(sizes, seconds) -> tuple[float, float]:
    """(latency_s ≥ 0, bandwidth_Bps) minimising the relative error of latency + size/bandwidth."""
    sizes = np.asarray(sizes, dtype=float)
    seconds = np.asarray(seconds, dtype=float)
    if len(sizes) == 0:
        raise ValueError("no points to fit")
    if len(sizes) == 1 or np.ptp(sizes) == 0:
        return 0.0, float(np.mean(sizes / seconds))
    weights = 1.0 / seconds
    design = np.stack([np.ones_like(sizes), sizes], axis=1) * weights[:, None]
    (latency, inverse_bw), *_ = np.linalg.lstsq(design, seconds * weights, rcond=None)
    if latency < 0 or inverse_bw <= 0:
        # no measurable latency: fit bandwidth alone
        latency = 0.0
        inverse_bw = float(np.sum(weights**2 * sizes * seconds) / np.sum(weights**2 * sizes**2))
    return float(latency), float(1.0 / inverse_bw)


def fit_copy_model(points: list[tuple[int, float]]) -> CopyModel:
    sizes = [size for size, _ in points]
    seconds = [t for _, t in points]
    latency, bandwidth = fit_latency_bandwidth(sizes, seconds)
    return CopyModel(
        latency_s=latency,
        bandwidth_Bps=bandwidth,
        points=[CopyPoint(bytes=int(size), seconds=float(t)) for size, t in points],
    )
