"""The operation graph: ids, lanes, bytes and dependencies against hand-computed figures."""

from collections import Counter

import pytest

from advisor.catalog import load_hardware, load_model
from advisor.documents import Workload
from advisor.opgraph import PREFILL, build_graph, parse_op_id
from advisor.plans import make_plan


def _plan(model="tiny-opt", schedule="row", split=5, chunks=2, gpu_batches=1, batch=2, prompt=8, gen=4,
          weights=None, resident=0):
    m = load_model(model)
    wl = Workload(batch=batch, prompt_len=prompt, gen_len=gen, gpu_batches=gpu_batches)
    return make_plan(m, load_hardware("cpu-generic"), wl, splits=split, chunks=chunks, schedule=schedule,
                     weights_gpu_layers=weights, resident_kv_layers=resident)


@pytest.mark.parametrize("schedule", ["row", "column"])
def test_ids_unique_and_deps_point_backwards(schedule):
    graph = build_graph(_plan(schedule=schedule, gpu_batches=2, weights=0))
    seen = set()
    for op in graph.operations:
        assert op.id not in seen
        for dep in op.deps:
            assert dep in seen, f"{op.id} depends on {dep}, issued later or never"
        seen.add(op.id)
        step, layer, batch, kind, chunk = parse_op_id(op.id)
        assert (step, layer, batch, kind, chunk) == (op.step, op.layer, op.batch, op.kind, op.chunk)


def test_decode_loads_move_exactly_act_of_split_and_kv_of_rest():
    plan = _plan(split=5, chunks=2)
    m, p, b = plan.model, 4, 2
    graph = build_graph(plan)
    for step in range(plan.workload.decode_steps):
        s = plan.workload.context(step)
        for layer in range(m.num_layers):
            ops = [o for o in graph.operations if o.step == step and o.layer == layer]
            act = [o for o in ops if o.kind == "load_act"]
            kv = [o for o in ops if o.kind == "load_kv"]
            assert sum(o.bytes for o in act) == b * 5 * m.hidden * p
            assert [(o.token_start, o.token_end) for o in act] == [(0, 2), (2, 5)]
            assert kv[0].bytes == 2 * b * (s - 5) * m.kv_dim * p
            assert (kv[0].token_start, kv[0].token_end) == (5, s)
            rec = [o for o in ops if o.kind == "recompute_kv"]
            assert [o.gemms[0] for o in rec] == [(b * 2, 2 * m.kv_dim, m.hidden), (b * 3, 2 * m.kv_dim, m.hidden)]
            attention = next(o for o in ops if o.kind == "attention")
            assert set(attention.deps) >= {o.id for o in rec} | {kv[0].id}


def test_split_zero_and_all_issue_no_empty_copies():
    for split, absent in ((0, "load_act"), (8, "load_kv")):
        plan = _plan(split=split, gen=2)  # one decode step at context 8
        kinds = Counter(o.kind for o in build_graph(plan).operations if o.step == 0)
        assert kinds[absent] == 0
        assert all(o.bytes > 0 for o in build_graph(plan).operations if o.lane in ("h2d", "d2h"))


def test_column_schedule_loads_each_layer_weights_once_per_step_for_all_batches():
    plan = _plan(schedule="column", gpu_batches=4, batch=8, weights=0)
    loads = [o for o in build_graph(plan).operations if o.kind == "load_weights"]
    steps = plan.workload.decode_steps + 1  # prefill too
    assert len(loads) == steps * plan.model.num_layers
    row = _plan(schedule="row", gpu_batches=4, batch=8, weights=0)
    row_loads = [o for o in build_graph(row).operations if o.kind == "load_weights"]
    assert len(row_loads) == steps * plan.model.num_layers * 4


@pytest.mark.parametrize("schedule, gpu_batches", [("row", 1), ("column", 2), ("row", 2)])
def test_double_buffering_makes_loads_wait_for_the_compute_two_layers_back(schedule, gpu_batches):
    """Two buffer slots: a unit's loads reuse the slot of the attention two units before it in issue
    order (across step boundaries), and wait for exactly that attention."""
    graph = build_graph(_plan(split=4, gen=3, schedule=schedule, gpu_batches=gpu_batches, batch=4))
    by_id = graph.by_id()
    attention_order = [op.id for op in graph.operations if op.kind == "attention" and op.step >= 0]
    assert len(attention_order) == graph.decode_steps * 2 * gpu_batches  # steps × layers × GPU batches
    checked = 0
    for op in graph.operations:
        if op.kind not in ("load_kv", "load_act") or op.step < 0:
            continue
        unit = f"s{op.step}.L{op.layer}.b{op.batch}.attention"
        position = attention_order.index(unit)
        consumers = [d for d in op.deps if by_id[d].kind == "attention"]
        if position < 2:
            assert consumers == []  # the first two units find their slots free
        else:
            assert consumers == [attention_order[position - 2]]
            assert by_id[consumers[0]].buffer == op.buffer == by_id[unit].buffer
            checked += 1
    assert checked > 0


def test_store_policy_keeps_act_of_recomputed_and_kv_of_transferred_tokens():
    plan = _plan(split=[3, 4, 6], gen=4)
    assert (plan.store.act_tokens, plan.store.kv_from) == (6, 3)
    graph = build_graph(plan)
    prefill_kv = next(o for o in graph.operations if o.step == PREFILL and o.kind == "store_kv")
    prefill_act = next(o for o in graph.operations if o.step == PREFILL and o.kind == "store_act")
    assert (prefill_kv.token_start, prefill_kv.token_end) == (3, 8)
    assert (prefill_act.token_start, prefill_act.token_end) == (0, 6)
    # the new tokens (positions 8, 9) are read back as KV by later steps; the last step stores nothing
    stored = sorted({(o.kind, o.token_start) for o in graph.operations if o.step >= 0 and o.kind.startswith("store")})
    assert stored == [("store_kv", 8), ("store_kv", 9)]


def test_resident_layers_have_no_copies():
    plan = _plan(resident=1)
    for op in build_graph(plan).operations:
        if op.layer == 0:
            assert op.lane == "gpu"


def test_a_prefill_mlp_is_costed_in_the_row_parts_the_backend_runs():
    from advisor import shapes

    model = load_model("opt-1.3b")
    h, f = model.hidden, model.ffn_hidden
    rows = 2 * shapes.MLP_ROWS + 100
    gemms, nbytes, kernels = shapes.mlp_work(model, rows, 2)
    assert [m for m, _, _ in gemms] == [shapes.MLP_ROWS] * 4 + [100] * 2  # up and down GEMM per part
    assert sum(2 * m * n * k for m, n, k in gemms) == 2 * rows * (f * h + h * f)  # the same FLOPs
    assert kernels == 4 * 3 and nbytes == rows * f * 2
    graph = build_graph(_plan(model="opt-1.3b", batch=12, prompt=1500, gen=2, split=0))
    prefill_mlp = next(op for op in graph.operations if op.step == PREFILL and op.kind == "mlp")
    assert [m for m, _, _ in prefill_mlp.gemms] == [shapes.MLP_ROWS] * 4 + [12 * 1500 - 2 * shapes.MLP_ROWS] * 2
