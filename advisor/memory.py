"""GPU and host memory a configuration needs, itemised, so limits can be named when they bind.

GPU: resident weights and embeddings, double-buffered weight buffers when any layer streams, the
resident KV cache, double-buffered KV and activation buffers for offloaded layers (sized for the
longest context), a prefill workspace and the profile's reserve. Host: exactly what the store
policy keeps (DESIGN §3 "What is stored") plus streamed weights, all pinned in exactly sized slabs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advisor import shapes
from advisor.documents import HardwareProfile, ModelSpec, Workload

HOST_USABLE_FRACTION = 0.9  # leave the OS and the process the rest


@dataclass(frozen=True)
class GpuMemory:
    weights: int
    weight_buffers: int
    resident_kv: int
    kv_buffers: int
    workspace: int
    tokens_and_logits: int
    reserved: int

    @property
    def total(self) -> int:
        return self.allocated + self.reserved

    @property
    def allocated(self) -> int:
        """What the backend allocates (everything but the profile's reserve)."""
        return (self.weights + self.weight_buffers + self.resident_kv + self.kv_buffers
                + self.workspace + self.tokens_and_logits)

    def items(self) -> dict[str, int]:
        return {"weights": self.weights, "weight slots": self.weight_buffers, "resident KV": self.resident_kv,
                "KV and activation buffers": self.kv_buffers, "prefill workspace": self.workspace,
                "tokens and logits": self.tokens_and_logits}


def resident_kv_bytes_per_layer(model: ModelSpec, workload: Workload, p: int) -> int:
    return shapes.kv_bytes(model, workload.batch, workload.max_context, p)


def prefill_workspace_bytes(model: ModelSpec, workload: Workload, p: int) -> int:
    """The prefill's peak (a unit's attention), as the backend allocates it: every GPU batch's
    hidden state; the unit's normalised input, Q, K, V, attention output and out projection; the
    K/V and activations of the unit before, still being stored; the attention and MLP temporaries."""
    h, kv, f = model.hidden, model.kv_dim, model.ffn_hidden
    b, G, T = workload.gpu_batch_size, workload.gpu_batches, workload.prompt_len
    rows = b * T
    up = f * (2 if model.activation == "swiglu" else 1)
    mlp_rows = min(rows, shapes.MLP_ROWS)
    attn_rows = min(rows, max(T, shapes.ATTENTION_ROWS))
    return (rows * ((G + 4) * h + 2 * (2 * kv + h)) + attn_rows * 3 * h + mlp_rows * (up + f + h)) * p


def gpu_memory(model: ModelSpec, hw: HardwareProfile, workload: Workload, p: int,
               weights_gpu_layers: int, resident_kv_layers: int, offload: bool,
               act_tokens: int | None = None, max_context: int | None = None,
               layer_bytes: int | None = None) -> GpuMemory:
    """GPU bytes of a configuration, item by item, as the backend allocates them.

    `act_tokens` (the activation buffer's tokens) defaults to every stored token, the most any split
    needs; `max_context` to the workload's; `layer_bytes` to the model's parameter count (the
    backend passes its aligned layout's size).
    """
    layers = model.num_layers
    layer_bytes = shapes.layer_weight_bytes(model, p) if layer_bytes is None else layer_bytes
    b = workload.gpu_batch_size
    context = workload.max_context if max_context is None else max_context
    acts = workload.stored_tokens if act_tokens is None else act_tokens
    resident = layers if not offload else resident_kv_layers
    kv_buffers = 0
    if resident < layers:
        kv_buffers = 2 * (shapes.kv_bytes(model, b, context, p) + shapes.act_bytes(model, b, acts, p))
    return GpuMemory(
        weights=weights_gpu_layers * layer_bytes + model.embedding_params() * p,
        weight_buffers=2 * layer_bytes if weights_gpu_layers < layers else 0,
        resident_kv=resident * shapes.kv_bytes(model, workload.batch, context, p),
        kv_buffers=kv_buffers,
        workspace=prefill_workspace_bytes(model, workload, p),
        tokens_and_logits=workload.gen_len * workload.batch * 8 + 2 * workload.batch * model.vocab_size * 4,
        reserved=hw.gpu_reserved_bytes,
    )


def host_store_bytes(model: ModelSpec, workload: Workload, p: int, offloaded_layers: int,
                     act_tokens: int, kv_from: int) -> int:
    """Pinned bytes of the host store: activations of [0, act_tokens), KV of [kv_from, stored).

    `act_tokens` and `kv_from` may be numpy arrays (the scheduler screens many splits at once)."""
    kv_tokens = np.maximum(workload.stored_tokens - kv_from, 0)
    per_layer = (shapes.act_bytes(model, workload.batch, act_tokens, p)
                 + shapes.kv_bytes(model, workload.batch, kv_tokens, p))
    return offloaded_layers * per_layer


def host_weight_bytes(model: ModelSpec, p: int, weights_gpu_layers: int) -> int:
    return (model.num_layers - weights_gpu_layers) * shapes.layer_weight_bytes(model, p)


def host_limit(hw: HardwareProfile) -> int:
    return int(hw.host_memory_bytes * HOST_USABLE_FRACTION)


def max_resident_kv_layers(model: ModelSpec, hw: HardwareProfile, workload: Workload, p: int,
                           weights_gpu_layers: int, kv_budget_bytes: int | None) -> int:
    """Most layers whose whole KV fits on the GPU beside everything else (−1: nothing fits).

    GPU memory grows by one layer's KV per resident layer (and loses the offload buffers when all
    layers are resident), so the answer is a division, checked against `gpu_memory` itself.
    """
    layers = model.num_layers
    per_layer = resident_kv_bytes_per_layer(model, workload, p)

    def fits(resident: int) -> bool:
        need = gpu_memory(model, hw, workload, p, weights_gpu_layers, resident, True).total
        budget_ok = kv_budget_bytes is None or resident * per_layer <= kv_budget_bytes
        return need <= hw.gpu_memory_bytes and budget_ok

    if fits(layers):
        return layers
    if not fits(0):
        return -1
    spare = hw.gpu_memory_bytes - gpu_memory(model, hw, workload, p, weights_gpu_layers, 0, True).total
    resident = min(layers - 1, spare // per_layer if per_layer else layers - 1)
    if kv_budget_bytes is not None and per_layer:
        resident = min(resident, kv_budget_bytes // per_layer)
    while resident > 0 and not fits(resident):
        resident -= 1
    return int(resident)


def gib(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def itemised(items: dict[str, int]) -> str:
    """'weights 1.29 GB, weight slots 7.25 GB, …': the items that are not zero."""
    return ", ".join(f"{name} {gib(size)}" for name, size in items.items() if size)
