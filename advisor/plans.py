"""Assembling a Plan document from chosen values.

The scheduler chooses the values (splits, chunks, residency); this module turns any such choice
into a valid Plan, deriving what follows from it — the store policy (DESIGN §3 "What is stored")
— so that tests, the TUI and the scheduler build plans the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from advisor.documents import HardwareProfile, ModelSpec, Plan, StorePolicy, Workload


def store_policy(splits: Sequence[int], workload: Workload) -> StorePolicy:
    """Activations of tokens some step recomputes, KV of tokens some step transfers (none of
    either without a decode step: nothing reads the store back)."""
    if not splits:
        return StorePolicy(act_tokens=0, kv_from=workload.stored_tokens)
    return StorePolicy(act_tokens=max(splits), kv_from=min(splits))


def default_dtype(model: ModelSpec, hardware: HardwareProfile) -> str:
    """The model's own dtype on a GPU; fp32 on a CPU profile, because that is what the CPU mode
    computes in (DESIGN §3 "Devices"), so that a CPU plan's bytes and memory are the run's."""
    return "fp32" if hardware.device_kind == "cpu" else model.dtype


def make_plan(
    model: ModelSpec,
    hardware: HardwareProfile,
    workload: Workload,
    *,
    splits: Sequence[int] | int = 0,
    chunks: int = 1,
    schedule: str = "row",
    objective: str | None = None,
    dtype: str | None = None,
    weights_gpu_layers: int | None = None,
    resident_kv_layers: int = 0,
    offload: bool = True,
    cost_model: str = "pipelined",
    notes: Sequence[str] = (),
    provenance: dict[str, str] | None = None,
) -> Plan:
    """A plan with the given choices; `splits` may be one split for every decode step."""
    if isinstance(splits, int):
        splits = [min(splits, workload.context(step)) for step in range(workload.decode_steps)]
    splits = list(splits)
    if not offload:
        splits = [0] * workload.decode_steps
        resident_kv_layers = model.num_layers
    return Plan(
        model=model,
        hardware=hardware,
        workload=workload,
        dtype=dtype or default_dtype(model, hardware),
        schedule=schedule,
        objective=objective or ("latency" if schedule == "row" else "throughput"),
        cost_model=cost_model,
        splits=splits,
        chunks=chunks,
        weights_gpu_layers=model.num_layers if weights_gpu_layers is None else weights_gpu_layers,
        resident_kv_layers=resident_kv_layers,
        store=store_policy(splits, workload) if offload else StorePolicy(act_tokens=0, kv_from=0),
        offload=offload,
        notes=list(notes),
        provenance=dict(provenance or {}),
    )
