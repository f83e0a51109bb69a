"""Plan → operations: the one contract the cost model, the simulator and the backend share.

`build_graph(plan)` expands a plan into the exact operations the runtime runs, in issue order,
for prefill and every decode step. Each operation names its lane (`h2d`, `d2h`, `gpu`, `cpu`),
its layer, GPU batch, step and chunk, the token range it moves or recomputes, its bytes and GEMMs,
the double-buffer slot it fills, and the ids it depends on. A lane runs its operations in the
order they appear here, like a CUDA stream.

Ids are `s{step}.L{layer}.b{batch}.{kind}` (`.c{chunk}` for chunked kinds); step `p` is prefill,
decode steps count from 0; `sample` (final norm, LM head, next token) uses layer = num_layers.

Schedules (FlexGen's loops): `row` runs each GPU batch through every step and layer before the
next batch, loading each layer's weights for it; `column` runs, for each step and layer, all GPU
batches, loading the layer's weights once for the group. In both, a layer's loads are issued
right after the previous layer's, so they overlap its compute; chunk k's recompute can start as
soon as chunk k has landed. Buffers are double-buffered: the loads into a slot wait for the
compute that last read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import ConfigDict, TypeAdapter

from advisor import shapes
from advisor.documents import DTYPE_BYTES, Plan

Lane = Literal["h2d", "d2h", "gpu", "cpu"]
PREFILL = -1


@dataclass(slots=True)
class Operation:
    __pydantic_config__ = ConfigDict(extra="forbid")

    id: str
    kind: str
    lane: Lane
    step: int
    layer: int
    batch: int
    chunk: int | None = None
    bytes: int = 0
    gemms: list[tuple[int, int, int]] = field(default_factory=list)
    kernels: int = 0
    token_start: int = 0
    token_end: int = 0
    buffer: int | None = None
    deps: list[str] = field(default_factory=list)

    @property
    def flops(self) -> float:
        return sum(2.0 * m * n * k for (m, n, k) in self.gemms)


@dataclass(slots=True)
class OpGraph:
    """The operations of one plan in issue order, with the plan's fingerprint."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    plan_fingerprint: str
    dtype_bytes: int
    num_layers: int
    decode_steps: int
    gpu_batches: int
    operations: list[Operation]

    def by_id(self) -> dict[str, Operation]:
        return {op.id: op for op in self.operations}


GRAPH_ADAPTER = TypeAdapter(OpGraph)


def op_id(step: int, layer: int, batch: int, kind: str, chunk: int | None = None) -> str:
    step_name = "p" if step == PREFILL else str(step)
    suffix = f".c{chunk}" if chunk is not None else ""
    return f"s{step_name}.L{layer}.b{batch}.{kind}{suffix}"


class _Builder:
    """Walks the schedule's loops and emits operations with their dependencies."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.model = plan.model
        self.p = DTYPE_BYTES[plan.dtype]
        self.b = plan.workload.gpu_batch_size
        self.ops: list[Operation] = []
        # last operation that produced each layer's output, per batch: the next layer's input
        self.hidden_ready: dict[int, str] = {}
        # double buffers: for each kind of buffer, the consumer ids of the loads into each slot
        self.weight_loads = 0
        self.weight_slot_consumer: list[str | None] = [None, None]
        self.kv_loads = 0
        self.kv_slot_consumer: list[str | None] = [None, None]
        # weights loaded for (step, layer) in the column schedule, or per unit in the row one
        self.weights_op: dict[tuple[int, int], str] = {}
        # the last store of each (layer, batch): a later load of that layer must wait for it
        self.last_store: dict[tuple[str, int, int], str] = {}

    def emit(self, op: Operation) -> Operation:
        self.ops.append(op)
        return op

    # --- pieces of one (step, layer, batch) unit -------------------------------------------

    def weights_streamed(self, layer: int) -> bool:
        return layer >= self.plan.weights_gpu_layers

    def kv_offloaded(self, layer: int) -> bool:
        return self.plan.offload and layer >= self.plan.resident_kv_layers

    def load_weights(self, step: int, layer: int, batch: int) -> str:
        slot = self.weight_loads % 2
        deps = [self.weight_slot_consumer[slot]] if self.weight_slot_consumer[slot] else []
        op = self.emit(Operation(
            id=op_id(step, layer, batch, "load_weights"), kind="load_weights", lane="h2d",
            step=step, layer=layer, batch=batch,
            bytes=shapes.layer_weight_bytes(self.model, self.p), buffer=slot, deps=deps,
        ))
        self.weight_loads += 1
        return op.id

    def unit(self, step: int, layer: int, batch: int, first_of_group: bool, last_of_group: bool):
        plan, model, p, b = self.plan, self.model, self.p, self.b
        prefill = step == PREFILL
        context = plan.workload.prompt_len if prefill else plan.workload.context(step)
        split = 0 if prefill else plan.splits[step]
        offloaded = self.kv_offloaded(layer)

        weights = []
        if self.weights_streamed(layer):
            key = (step, layer) if plan.schedule == "column" else (step, layer, batch)
            if first_of_group or plan.schedule == "row":
                self.weights_op[key] = self.load_weights(step, layer, batch)
            weights = [self.weights_op[key]]

        act_loads, kv_load, slot = [], [], None
        if offloaded and not prefill:
            slot = self.kv_loads % 2
            buffer_free = [self.kv_slot_consumer[slot]] if self.kv_slot_consumer[slot] else []
            self.kv_loads += 1
            act_store = self.last_store.get(("act", layer, batch))
            for c, (lo, hi) in enumerate(shapes.chunk_bounds(0, split, plan.chunks)):
                act_loads.append(self.emit(Operation(
                    id=op_id(step, layer, batch, "load_act", c), kind="load_act", lane="h2d",
                    step=step, layer=layer, batch=batch, chunk=c,
                    bytes=shapes.act_bytes(model, b, hi - lo, p), token_start=lo, token_end=hi,
                    buffer=slot, deps=buffer_free + ([act_store] if act_store else []),
                )))
            if split < context:
                kv_store = self.last_store.get(("kv", layer, batch))
                kv_load = [self.emit(Operation(
                    id=op_id(step, layer, batch, "load_kv"), kind="load_kv", lane="h2d",
                    step=step, layer=layer, batch=batch,
                    bytes=shapes.kv_bytes(model, b, context - split, p),
                    token_start=split, token_end=context, buffer=slot,
                    deps=buffer_free + ([kv_store] if kv_store else []),
                )).id]

        rows = b * context if prefill else b
        prev = self.hidden_ready.get(batch)
        gemms, nbytes, kernels = shapes.qkv_work(model, rows, p)
        qkv = self.emit(Operation(
            id=op_id(step, layer, batch, "qkv"), kind="qkv", lane="gpu", step=step, layer=layer,
            batch=batch, gemms=gemms, kernels=kernels, bytes=nbytes, token_start=context if not prefill else 0,
            token_end=context + (0 if prefill else 1), deps=([prev] if prev else []) + weights,
        ))
        recomputes = []
        for c, load in enumerate(act_loads):
            gemms, nbytes, kernels = shapes.recompute_work(model, b, load.token_end - load.token_start)
            recomputes.append(self.emit(Operation(
                id=op_id(step, layer, batch, "recompute_kv", c), kind="recompute_kv", lane="gpu",
                step=step, layer=layer, batch=batch, chunk=c, gemms=gemms, bytes=nbytes, kernels=kernels,
                token_start=load.token_start, token_end=load.token_end, buffer=slot,
                deps=[load.id] + weights,
            )).id)
        if prefill:
            gemms, nbytes, kernels = shapes.prefill_attention_work(model, b, context)
        else:
            gemms, nbytes, kernels = shapes.decode_attention_work(model, b, context, p)
        attention = self.emit(Operation(
            id=op_id(step, layer, batch, "attention"), kind="attention", lane="gpu",
            step=step, layer=layer, batch=batch, gemms=gemms, bytes=nbytes, kernels=kernels,
            token_start=0, token_end=context + (0 if prefill else 1), buffer=slot,
            deps=[qkv.id] + recomputes + kv_load,
        ))
        gemms, nbytes, kernels = shapes.mlp_work(model, rows, p)
        mlp = self.emit(Operation(
            id=op_id(step, layer, batch, "mlp"), kind="mlp", lane="gpu", step=step, layer=layer,
            batch=batch, gemms=gemms, bytes=nbytes, kernels=kernels, deps=[attention.id],
        ))
        self.hidden_ready[batch] = mlp.id
        if slot is not None:
            self.kv_slot_consumer[slot] = attention.id
        if self.weights_streamed(layer) and last_of_group:
            self.weight_slot_consumer[(self.weight_loads - 1) % 2] = mlp.id

        if offloaded:
            self.stores(step, layer, batch, context, qkv.id)

    def stores(self, step: int, layer: int, batch: int, context: int, producer: str):
        """Write back what the store policy keeps of the tokens this unit produced."""
        plan, model, p, b = self.plan, self.model, self.p, self.b
        if step == PREFILL:
            first, last = 0, context
        else:
            first, last = context, context + 1
        last = min(last, plan.workload.stored_tokens)
        kv_lo, kv_hi = max(first, plan.store.kv_from), last
        act_lo, act_hi = first, min(last, plan.store.act_tokens)
        if kv_hi > kv_lo:
            op = self.emit(Operation(
                id=op_id(step, layer, batch, "store_kv"), kind="store_kv", lane="d2h",
                step=step, layer=layer, batch=batch, bytes=shapes.kv_bytes(model, b, kv_hi - kv_lo, p),
                token_start=kv_lo, token_end=kv_hi, deps=[producer],
            ))
            self.last_store[("kv", layer, batch)] = op.id
        if act_hi > act_lo:
            op = self.emit(Operation(
                id=op_id(step, layer, batch, "store_act"), kind="store_act", lane="d2h",
                step=step, layer=layer, batch=batch, bytes=shapes.act_bytes(model, b, act_hi - act_lo, p),
                token_start=act_lo, token_end=act_hi, deps=[producer],
            ))
            self.last_store[("act", layer, batch)] = op.id

    def sample(self, step: int, batch: int):
        layer = self.model.num_layers
        gemms, nbytes, kernels = shapes.sample_work(self.model, self.b)
        op = self.emit(Operation(
            id=op_id(step, layer, batch, "sample"), kind="sample", lane="gpu", step=step,
            layer=layer, batch=batch, gemms=gemms, bytes=nbytes, kernels=kernels,
            deps=[self.hidden_ready[batch]],
        ))
        self.hidden_ready[batch] = op.id

    # --- schedules ---------------------------------------------------------------------------

    def build(self) -> list[Operation]:
        plan = self.plan
        layers = range(self.model.num_layers)
        batches = range(plan.workload.gpu_batches)
        steps = [PREFILL] + list(range(plan.workload.decode_steps))
        if plan.schedule == "column":
            for step in steps:
                for layer in layers:
                    for batch in batches:
                        self.unit(step, layer, batch, batch == 0, batch == batches[-1])
                for batch in batches:
                    self.sample(step, batch)
        else:
            for batch in batches:
                for step in steps:
                    for layer in layers:
                        self.unit(step, layer, batch, True, True)
                    self.sample(step, batch)
        return self.ops


def build_graph(plan: Plan) -> OpGraph:
    """The operations `plan` runs, in issue order, with their dependencies."""
    return OpGraph(
        plan_fingerprint=plan.fingerprint(),
        dtype_bytes=DTYPE_BYTES[plan.dtype],
        num_layers=plan.model.num_layers,
        decode_steps=plan.workload.decode_steps,
        gpu_batches=plan.workload.gpu_batches,
        operations=_Builder(plan).build(),
    )


def parse_op_id(text: str) -> tuple[int, int, int, str, int | None]:
    """(step, layer, batch, kind, chunk) of an operation id; step is PREFILL for `p`."""
    parts = text.split(".")
    step = PREFILL if parts[0] == "sp" else int(parts[0][1:])
    chunk = int(parts[4][1:]) if len(parts) > 4 else None
    return step, int(parts[1][1:]), int(parts[2][1:]), parts[3], chunk
