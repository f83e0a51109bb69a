"""The simulator: a SimPy discrete-event model of the PCIe copy engines, the GPU and the host CPU.

It runs a plan's operations (`advisor.opgraph`) as the runtime would issue them, one process per
lane, and predicts when each starts and ends: a `Trace` with the same operation ids as a measured
one. `simulate_plan` is the entry point; `simulate_many` runs many plans and `simulate_splits` one
plan at each of many splits, for the TUI and sweeps; `text_timeline` draws one decode step.
"""

from simulator.simulate import simulate_graph, simulate_many, simulate_plan, simulate_splits
from simulator.timeline import text_timeline

__all__ = ["simulate_graph", "simulate_plan", "simulate_many", "simulate_splits", "text_timeline"]
