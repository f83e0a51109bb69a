"""Plan → operations → lanes → measured times: the backend's one loop.

`Executor(runtime, plan)` expands the plan with `advisor.opgraph.build_graph` — the same
operations, ids and dependencies the simulator schedules — and `run(lanes)` issues them in graph
order, each on its lane, after waiting for its dependencies on other lanes. Nothing else is
issued and nothing is synchronised inside a step; the host only waits, to bound how far it runs
ahead, for the `sample` of the step before last, which also drives the progress bar.

What flows between operations:
- on one lane only (the compute stream): the hidden state and Q of each GPU batch, held as
  Python references and replaced by each operation;
- across lanes, through preallocated buffers the graph's dependencies protect: the host stores,
  the double-buffered KV/activation and weight slots, the token buffer;
- from `qkv` to the stores (and, in prefill, to attention) of the same unit, through freshly
  allocated tensors handed over by unit; the d2h copies `record_stream` them so the caching
  allocator cannot reuse their memory before the copy has read it.

Semantics of each kind (DESIGN §3, `advisor.opgraph`): `qkv` = input norm, Q/K/V projections and
rotation of the new token(s), with the embedding at layer 0; `load_act`/`load_kv` = host→device
copies of a token range into the unit's buffer slot; `recompute_kv` = K/V projections of the
landed activations into the KV buffer, K rotated at the tokens' positions; `attention` = over
tokens [0, context] and the out projection with residual; `mlp` = post-attention norm, MLP,
residual; `store_kv`/`store_act` = device→host copies of what the store policy keeps;
`load_weights` = a layer's weights into a weight slot; `sample` = final norm, LM head, argmax.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from advisor.documents import Plan, TraceRecord
from advisor.opgraph import PREFILL, Operation, build_graph
from backend import model
from backend.runtime import Runtime


@dataclass
class Handoff:
    """A unit's qkv outputs that operations on other lanes (or prefill attention) still need."""

    first: int  # position of the first token
    k: torch.Tensor  # [tokens, b, kv_heads, d]
    v: torch.Tensor
    xn: torch.Tensor  # normalised input [tokens, b, h]
    readers: int


@dataclass
class RunResult:
    times: dict[str, tuple[float, float]]  # op id → (start, end) seconds after the run's origin
    moved_bytes: dict[str, int]  # op id → bytes a copy really moved
    wall_s: float  # host wall clock from the first submission to the end of the last operation
    span_s: float | None = None  # the same on the device's clock (CUDA), None where there is none
    ops: list[Operation] = field(default_factory=list)

    def records(self) -> list[TraceRecord]:
        return [TraceRecord(id=op.id, lane=op.lane, start_s=self.times[op.id][0], end_s=self.times[op.id][1])
                for op in self.ops if op.id in self.times]


class Executor:
    """Runs one plan's operations on a runtime that fits it."""

    def __init__(self, runtime: Runtime, plan: Plan):
        runtime.check_plan(plan)
        self.rt, self.plan, self.spec = runtime, plan, plan.model
        self.graph = build_graph(plan)
        self.ops = self.graph.operations
        by_id = self.graph.by_id()
        self.lane_of = {op.id: op.lane for op in self.ops}
        self.kv_slot: dict[tuple, int | None] = {}
        self.weights_of: dict[tuple, model.LayerWeights] = {}
        self.readers: Counter = Counter()
        for op in self.ops:
            unit = (op.step, op.layer, op.batch)
            if op.kind == "attention":
                self.kv_slot[unit] = op.buffer
                if op.step == PREFILL and self._offloaded(op.layer):
                    self.readers[unit] += 1
            elif op.kind == "qkv":
                loads = [by_id[d] for d in op.deps if by_id[d].kind == "load_weights"]
                self.weights_of[unit] = (runtime.weight_slots[loads[0].buffer] if loads
                                         else runtime.resident_weights[op.layer])
            elif op.kind in ("store_kv", "store_act"):
                self.readers[unit] += 1
        self.hidden: dict[int, torch.Tensor] = {}
        self.q: dict[int, torch.Tensor] = {}
        self.handoff: dict[tuple, Handoff] = {}
        self.moved: dict[str, int] = {}

    def _offloaded(self, layer: int) -> bool:
        return layer >= self.rt.layout.resident_kv_layers

    # --- the loop ----------------------------------------------------------------------------

    def run(self, lanes, steps: Iterable[int] | None = None, on_sample: Callable[[Operation], None] | None = None,
            ahead_steps: int = 2) -> RunResult:
        """Issue the operations of `steps` (default: prefill and every decode step) in graph order.

        Rerunning decode steps is idempotent: they read what prefill and earlier steps stored and
        write the same values again, which is how timing is measured twice on the same state.

        In such a run an operation whose dependency lies outside it (done before the run began)
        loses the order that dependency gave it against the run's own operations: in the row
        schedule with several GPU batches, batch 1's first loads of the run reuse the buffer slots
        that batch 0's last attention of the run reads, and were ordered after it only through
        batch 1's earlier step. Such an operation waits for the latest operation of every other lane.
        """
        wanted = None if steps is None else set(steps)
        ops = [op for op in self.ops if wanted is None or op.step in wanted]
        events: dict[str, object] = {}
        latest: dict[str, object] = {}  # lane → its last operation's event in this run
        samples: deque = deque()
        ahead = ahead_steps * self.rt.G
        self.moved = {}
        with torch.no_grad():
            lanes.start(len(ops))
            t0 = time.perf_counter()
            for op in ops:
                waits = [events[d] for d in op.deps if d in events and self.lane_of[d] != op.lane]
                if wanted is not None and any(d not in events for d in op.deps):
                    waits += [event for lane, event in latest.items() if lane != op.lane]
                fn = getattr(self, "_" + op.kind)(op)
                events[op.id] = latest[op.lane] = lanes.submit(op.id, op.lane, fn, waits)
                if op.kind == "sample":
                    samples.append((op, events[op.id]))
                    while len(samples) > ahead:
                        done, token = samples.popleft()
                        lanes.wait_host(token)
                        if on_sample:
                            on_sample(done)
            lanes.finish()
            wall = time.perf_counter() - t0
        for done, _ in samples:
            if on_sample:
                on_sample(done)
        return RunResult(times=lanes.times(), moved_bytes=dict(self.moved), wall_s=wall, ops=ops,
                         span_s=lanes.span_s())

    # --- helpers -----------------------------------------------------------------------------

    def _rows(self, batch: int) -> slice:
        b = self.rt.b
        return slice(batch * b, (batch + 1) * b)

    def _kv_buffers(self, unit: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """The KV the unit's attention reads: the layer's resident cache or the unit's buffer slot."""
        step, layer, batch = unit
        rt = self.rt
        if not self._offloaded(layer):
            return rt.cache_k[layer, batch], rt.cache_v[layer, batch]
        slot = self.kv_slot[unit]
        return rt.k_slots[slot], rt.v_slots[slot]

    def _take(self, unit: tuple) -> Handoff:
        handoff = self.handoff[unit]
        handoff.readers -= 1
        if handoff.readers == 0:
            del self.handoff[unit]
        return handoff

    def _copy(self, op: Operation, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
        """A copy operation: each (destination, source) pair, asynchronously where pinned."""
        self.moved[op.id] = sum(dst.numel() * dst.element_size() for dst, _ in pairs)

        def fn():
            for dst, src in pairs:
                dst.copy_(src, non_blocking=True)
        return fn

    # --- one method per kind of operation; each returns the function the lane runs -----------

    def _load_weights(self, op: Operation):
        rt = self.rt
        return self._copy(op, [(rt.weight_slots[op.buffer].flat, rt.host_weights.tensors[("w", op.layer)])])

    def _load_act(self, op: Operation):
        rt, lo, hi = self.rt, op.token_start, op.token_end
        return self._copy(op, [(rt.act_slots[op.buffer][lo:hi], rt.host_stores.act(op.layer, op.batch, lo, hi))])

    def _load_kv(self, op: Operation):
        rt, lo, hi = self.rt, op.token_start, op.token_end
        k, v = rt.host_stores.kv(op.layer, op.batch, lo, hi)
        return self._copy(op, [(rt.k_slots[op.buffer][lo:hi], k), (rt.v_slots[op.buffer][lo:hi], v)])

    def _store(self, op: Operation, host: list[torch.Tensor], names: list[str]):
        unit, lo, hi = (op.step, op.layer, op.batch), op.token_start, op.token_end
        self.moved[op.id] = sum(t.numel() * t.element_size() for t in host)
        cuda = self.rt.device.type == "cuda"

        def fn():
            handoff = self._take(unit)
            for dst, name in zip(host, names):
                src = getattr(handoff, name)
                dst.copy_(src[lo - handoff.first:hi - handoff.first], non_blocking=True)
                if cuda:
                    src.record_stream(torch.cuda.current_stream())
        return fn

    def _store_kv(self, op: Operation):
        k, v = self.rt.host_stores.kv(op.layer, op.batch, op.token_start, op.token_end)
        return self._store(op, [k, v], ["k", "v"])

    def _store_act(self, op: Operation):
        act = self.rt.host_stores.act(op.layer, op.batch, op.token_start, op.token_end)
        return self._store(op, [act], ["xn"])

    def _qkv(self, op: Operation):
        rt, spec = self.rt, self.spec
        unit, layer, j = (op.step, op.layer, op.batch), op.layer, op.batch
        w = self.weights_of[unit]
        prefill = op.step == PREFILL
        first = 0 if prefill else op.token_start  # decode: the new token sits at position `context`
        rows = self._rows(j)
        readers = self.readers[unit]
        offloaded = self._offloaded(layer)
        kbuf, vbuf = (None, None) if (offloaded and prefill) else self._kv_buffers(unit)

        def fn():
            if layer == 0:
                ids = rt.prompt[rows].t() if prefill else rt.tokens[op.step, rows].unsqueeze(0)
                self.hidden[j] = model.embed(spec, rt.globals, ids, first)
            xn, q, k, v = model.project_qkv(spec, w, rt.rotary, self.hidden[j], first)
            self.q[j] = q
            if kbuf is not None:
                n = k.shape[0]
                kbuf[first:first + n] = k
                vbuf[first:first + n] = v
            if readers:
                self.handoff[unit] = Handoff(first, k, v, xn, readers)
        return fn

    def _recompute_kv(self, op: Operation):
        rt, spec, lo, hi = self.rt, self.spec, op.token_start, op.token_end
        w = self.weights_of[(op.step, op.layer, op.batch)]
        act = rt.act_slots[op.buffer][lo:hi]
        k, v = rt.k_slots[op.buffer][lo:hi], rt.v_slots[op.buffer][lo:hi]

        def fn():
            model.recompute_kv(spec, w, rt.rotary, act, k, v, lo)
        return fn

    def _attention(self, op: Operation):
        unit, j = (op.step, op.layer, op.batch), op.batch
        w = self.weights_of[unit]
        if op.step == PREFILL:
            if self._offloaded(op.layer):
                def kv():
                    handoff = self._take(unit)
                    return handoff.k, handoff.v
            else:
                kbuf, vbuf = self._kv_buffers(unit)
                T = op.token_end

                def kv():
                    return kbuf[:T], vbuf[:T]

            def fn():
                k, v = kv()
                attn = model.attend_prefill(self.q.pop(j), k, v)
                self.hidden[j] = self.hidden[j] + model.out_projection(w, attn)
            return fn

        kbuf, vbuf = self._kv_buffers(unit)
        end = op.token_end  # context + 1: the cached tokens and the new one

        def fn():
            q = self.q.pop(j)[0]
            attn = model.attend_decode(q, kbuf[:end], vbuf[:end]).unsqueeze(0)
            self.hidden[j] = self.hidden[j] + model.out_projection(w, attn)
        return fn

    def _mlp(self, op: Operation):
        spec, j = self.spec, op.batch
        w = self.weights_of[(op.step, op.layer, op.batch)]

        def fn():
            self.hidden[j] = model.mlp(spec, w, self.hidden[j])
        return fn

    def _sample(self, op: Operation):
        rt, spec, j = self.rt, self.spec, op.batch
        rows = self._rows(j)
        index = op.step + 1  # prefill (step -1) makes token 0; decode step t makes token t + 1

        def fn():
            x = self.hidden.pop(j)[-1]
            scores = model.logits(spec, rt.globals, x)
            rt.tokens[index, rows] = scores.argmax(dim=-1)
            if rt.logits is not None:
                rt.logits[index, rows] = scores
        return fn


def decode_step_times(plan: Plan, times: dict[str, tuple[float, float]], steps: Iterable[int],
                      origin: float = 0.0) -> dict[int, float]:
    """Step times as `advisor.tracesummary` defines them, for runs that may lack prefill.

    A step runs from the end of the previous step's `sample` to the end of its own: the latest over
    GPU batches in the column schedule, the sum over GPU batches in the row schedule. Where the
    previous step was not part of the run, it runs from `origin`, or in the row schedule, for GPU
    batch j > 0, from the previous batch's last `sample` of the run (batches run one after another).
    """
    from advisor.opgraph import op_id, parse_op_id

    G = plan.workload.gpu_batches
    L = plan.model.num_layers
    last_sample: dict[int, float] = {}  # GPU batch → the end of its last sample in `times`
    for name, (_, end) in times.items():
        if name.endswith(".sample"):
            batch = parse_op_id(name)[2]
            last_sample[batch] = max(last_sample.get(batch, end), end)
    out = {}
    for step in steps:
        ends, prevs = [], []
        for j in range(G):
            end = times.get(op_id(step, L, j, "sample"))
            if end is None:
                break
            prev = times.get(op_id(step - 1 if step > 0 else PREFILL, L, j, "sample"))
            ends.append(end[1])
            if prev:
                prevs.append(prev[1])
            elif plan.schedule == "row" and j > 0 and j - 1 in last_sample:
                prevs.append(last_sample[j - 1])
            else:
                prevs.append(origin)
        else:
            if plan.schedule == "column":
                out[step] = max(ends) - max(prevs)
            else:
                out[step] = sum(e - p for e, p in zip(ends, prevs))
    return out
