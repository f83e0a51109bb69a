"""Everything a plan's operations touch, allocated once: weights, host stores, device buffers.

A `Runtime` is sized by a `Capacity` — the model, batch, prompt, positions and the store policy
it must hold — and then serves any plan that fits in it: `advisor execute` builds one for its
plan; the GPU check builds one for the union of the plans it compares (same prefill, stores large
enough for every split) and runs each plan's decode steps on it, so tens of GB are pinned once.

Device side: the resident layers' weights, two weight slots for streamed layers, the resident
KV caches, and for offloaded layers two KV buffers (`[positions, b, kv_heads, d]`, sized for the
longest context) and two activation buffers (`[act_tokens, b, h]`): the double buffers the
operation graph's `buffer` slots name. Host side: pinned `HostStores` and streamed weights.
Memory is counted before anything is allocated (`Runtime.memory_need`, from `advisor.memory`) so
a plan that does not fit is refused with the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from advisor import memory
from advisor.documents import Plan
from advisor.errors import UserError
from backend.model import DTYPES, GlobalWeights, LayerLayout, LayerWeights, RandomWeights, Rotary
from backend.stores import HostSlab, HostStores, Piece, StoreShape, slab_bytes, store_pieces


class PlanDoesNotFit(UserError, ValueError):
    """`Runtime.check_plan`'s refusal: the user's error (exit 2, one line), and a ValueError as before."""


@dataclass(frozen=True)
class Capacity:
    """What a runtime holds; a plan fits if its needs are within these."""

    plan: Plan  # the plan whose model, workload shape, residency and weights placement it takes
    act_tokens: int
    kv_from: int
    max_context: int
    stored_tokens: int
    gen_len: int
    max_split: int

    @classmethod
    def of(cls, plan: Plan, *others: Plan) -> "Capacity":
        plans = (plan, *others)
        for other in others:
            check_same_shape(plan, other)
        wl = [p.workload for p in plans]
        return cls(
            plan=plan,
            act_tokens=max(p.store.act_tokens for p in plans),
            kv_from=min(p.store.kv_from for p in plans),
            max_context=max(w.max_context for w in wl),
            stored_tokens=max(w.stored_tokens for w in wl),
            gen_len=max(w.gen_len for w in wl),
            max_split=max([0] + [s for p in plans for s in p.splits]),
        )


def check_same_shape(a: Plan, b: Plan) -> None:
    """Plans that can share a runtime: same model, batch, prompt, residency and weight placement."""
    wa, wb = a.workload, b.workload
    same = (a.model.model_dump(exclude={"source"}) == b.model.model_dump(exclude={"source"})
            and a.dtype == b.dtype and wa.batch == wb.batch and wa.gpu_batches == wb.gpu_batches
            and wa.prompt_len == wb.prompt_len and a.offload == b.offload
            and a.resident_kv_layers == b.resident_kv_layers
            and a.weights_gpu_layers == b.weights_gpu_layers)
    if not same:
        raise ValueError("plans differ in model, dtype, batch, prompt, residency or weight placement")


def compute_dtype(plan: Plan, device: torch.device) -> torch.dtype:
    """The plan's dtype on the GPU; fp32 on the CPU (DESIGN §3: the CPU mode is for tests)."""
    return DTYPES[plan.dtype] if device.type == "cuda" else torch.float32


@dataclass
class Layout:
    """Which layers keep what where, from the plan."""

    num_layers: int
    weights_gpu_layers: int
    resident_kv_layers: int  # all layers when the plan does not offload

    @classmethod
    def of(cls, plan: Plan) -> "Layout":
        L = plan.model.num_layers
        return cls(L, plan.weights_gpu_layers, plan.resident_kv_layers if plan.offload else L)

    @property
    def offloaded(self) -> list[int]:
        return list(range(self.resident_kv_layers, self.num_layers))

    @property
    def streamed(self) -> list[int]:
        return list(range(self.weights_gpu_layers, self.num_layers))


@dataclass
class MemoryNeed:
    gpu: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)

    @property
    def gpu_total(self) -> int:
        return sum(self.gpu.values())

    @property
    def host_total(self) -> int:
        return sum(self.host.values())


class Runtime:
    """Weights, host stores and device buffers for plans that fit `capacity`."""

    def __init__(self, capacity: Capacity, device: torch.device | str, weights=None,
                 keep_logits: bool = False, progress: Callable[[str, int, int], None] | None = None):
        self.capacity = cap = capacity
        plan = cap.plan
        self.device = device = torch.device(device)
        self.spec = spec = plan.model
        self.dtype = compute_dtype(plan, device)
        self.layout = Layout.of(plan)
        self.layer_layout = LayerLayout(spec)
        wl = plan.workload
        self.b, self.G, self.prompt_len = wl.gpu_batch_size, wl.gpu_batches, wl.prompt_len
        self.pinned = device.type == "cuda"
        self.keep_logits = keep_logits
        self._progress = progress or (lambda what, done, total: None)
        self.host_stores: HostStores | None = None
        self.host_weights: HostSlab | None = None
        weights = weights or RandomWeights(0)
        try:
            self._allocate(weights)
        except BaseException:
            self.release()
            raise

    # --- sizes -----------------------------------------------------------------------------

    def store_shape(self) -> StoreShape:
        return _store_shape(self.capacity)

    @staticmethod
    def memory_need(capacity: Capacity, device: torch.device | str) -> MemoryNeed:
        """Bytes this runtime will allocate, itemised, before allocating any of it."""
        device = torch.device(device)
        plan, spec = capacity.plan, capacity.plan.model
        dtype = compute_dtype(plan, device)
        p = torch.tensor([], dtype=dtype).element_size()
        lay = Layout.of(plan)
        wl = plan.workload
        layer = LayerLayout(spec).numel * p
        need = MemoryNeed()
        need.gpu = memory.gpu_memory(
            spec, plan.hardware, wl, p, lay.weights_gpu_layers, lay.resident_kv_layers, bool(lay.offloaded),
            act_tokens=capacity.act_tokens, max_context=capacity.max_context, layer_bytes=layer,
        ).items()
        need.gpu["tokens and logits"] = capacity.gen_len * wl.batch * 8 + 2 * wl.batch * spec.vocab_size * 4
        if device.type == "cuda":
            store = slab_bytes(store_pieces(_store_shape(capacity), lay.offloaded, dtype))
            need.host["pinned KV/activation store"] = store
            need.host["pinned streamed weights"] = slab_bytes(
                [Piece(("w", l), (LayerLayout(spec).numel,), dtype) for l in lay.streamed])
        else:
            need.host["KV/activation store"] = slab_bytes(store_pieces(_store_shape(capacity), lay.offloaded, dtype))
            need.host["streamed weights"] = len(lay.streamed) * layer
            need.host["device buffers (CPU mode)"] = need.gpu_total
        return need

    # --- allocation --------------------------------------------------------------------------

    def _allocate(self, weights) -> None:
        spec, dev, dtype, cap, lay = self.spec, self.device, self.dtype, self.capacity, self.layout
        b, G = self.b, self.G
        numel = self.layer_layout.numel
        empty = lambda *shape: torch.empty(shape, dtype=dtype, device=dev)  # noqa: E731

        # host stores first: the slow part, with progress
        if lay.offloaded:
            what = "pin KV/activation store" if self.pinned else "host KV/activation store"
            self.host_stores = HostStores(self.store_shape(), lay.offloaded, dtype, self.pinned,
                                          lambda done, total: self._progress(what, done, total))
        # weights
        self.globals: GlobalWeights = weights.global_weights(spec, dtype, dev)
        self.rotary = Rotary(spec, dtype, dev) if spec.position == "rotary" else None
        self.resident_weights: dict[int, LayerWeights] = {}
        for layer in range(lay.weights_gpu_layers):
            flat = empty(numel)
            weights.fill_layer(spec, self.layer_layout, layer, flat)
            self.resident_weights[layer] = LayerWeights(flat, self.layer_layout, spec)
            self._progress("weights", layer + 1, spec.num_layers)
        self.weight_slots: list[LayerWeights] = []
        if lay.streamed:
            slots = [empty(numel) for _ in range(2)]
            self.weight_slots = [LayerWeights(flat, self.layer_layout, spec) for flat in slots]
            pieces = [Piece(("w", layer), (numel,), dtype) for layer in lay.streamed]
            self.host_weights = HostSlab(pieces, self.pinned,
                                         lambda done, total: self._progress("pin streamed weights", done, total))
            for layer in lay.streamed:  # filled where generation is fast, then copied to the host
                weights.fill_layer(spec, self.layer_layout, layer, slots[0])
                self.host_weights.tensors[("w", layer)].copy_(slots[0])
                self._progress("weights", layer + 1, spec.num_layers)
        # KV: resident caches and the double buffers of offloaded layers
        pos, kvh, d, h = cap.max_context, spec.num_kv_heads, spec.head_dim, spec.hidden
        self.cache_k: dict[tuple[int, int], torch.Tensor] = {}
        self.cache_v: dict[tuple[int, int], torch.Tensor] = {}
        for layer in range(lay.resident_kv_layers):
            for j in range(G):
                self.cache_k[layer, j] = empty(pos, b, kvh, d)
                self.cache_v[layer, j] = empty(pos, b, kvh, d)
        self.k_slots, self.v_slots, self.act_slots = [], [], []
        if lay.offloaded:
            for _ in range(2):
                self.k_slots.append(empty(pos, b, kvh, d))
                self.v_slots.append(empty(pos, b, kvh, d))
                self.act_slots.append(empty(cap.act_tokens, b, h))
        batch = cap.plan.workload.batch
        self.tokens = torch.zeros(cap.gen_len, batch, dtype=torch.long, device=dev)
        self.prompt = torch.zeros(batch, self.prompt_len, dtype=torch.long, device=dev)
        self.logits = (torch.zeros(cap.gen_len, batch, spec.vocab_size, dtype=torch.float32, device=dev)
                       if self.keep_logits else None)

    # --- use ---------------------------------------------------------------------------------

    def check_plan(self, plan: Plan) -> None:
        """Refuse a plan that does not fit this runtime."""
        cap = self.capacity
        try:
            check_same_shape(cap.plan, plan)
        except ValueError as error:
            raise PlanDoesNotFit(f"plan does not fit the runtime: {error}") from None
        wl = plan.workload
        problems = []
        if wl.max_context > cap.max_context or wl.gen_len > cap.gen_len:
            problems.append("generates more tokens than the runtime holds")
        if plan.offload:
            if plan.store.act_tokens > cap.act_tokens or plan.store.kv_from < cap.kv_from:
                problems.append("stores more than the runtime's host store holds")
            if max([0] + plan.splits) > cap.act_tokens:
                problems.append("recomputes more tokens than the activation buffers hold")
        if problems:
            raise PlanDoesNotFit("plan does not fit the runtime: " + "; ".join(problems))

    def set_prompt(self, ids: torch.Tensor) -> None:
        self.prompt.copy_(ids.to(self.prompt.device))

    def release(self) -> None:
        """Unpin host memory and drop device buffers; safe to call twice."""
        if self.host_stores is not None:
            self.host_stores.release()
            self.host_stores = None
        if self.host_weights is not None:
            self.host_weights.release()
            self.host_weights = None
        for name in ("resident_weights", "weight_slots", "cache_k", "cache_v", "k_slots", "v_slots",
                     "act_slots", "globals", "logits"):
            if hasattr(self, name):
                setattr(self, name, None)

    @property
    def pinned_bytes(self) -> int:
        return ((self.host_stores.pinned_bytes if self.host_stores else 0)
                + (self.host_weights.pinned_bytes if self.host_weights else 0))

    @property
    def host_bytes(self) -> int:
        return ((self.host_stores.total_bytes if self.host_stores else 0)
                + (self.host_weights.total_bytes if self.host_weights else 0))


def _store_shape(capacity: Capacity) -> StoreShape:
    plan, spec = capacity.plan, capacity.plan.model
    return StoreShape(batch=plan.workload.gpu_batch_size, gpu_batches=plan.workload.gpu_batches,
                      hidden=spec.hidden, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                      act_tokens=capacity.act_tokens, kv_from=capacity.kv_from,
                      stored_tokens=capacity.stored_tokens)
