"""The executing backend in CPU mode, fp32, tiny configs, against Hugging Face transformers.

Logits first, then greedy tokens: every offloaded configuration (split 0, half, all and varying,
one and several chunks, row and column schedules, streamed weights, partial residency), the
resident path, and transformers' own OPTForCausalLM / LlamaForCausalLM (MHA and GQA) on the same
random weights. Then the things a GPU run relies on: recomputed K/V equal transferred K/V, the
stream protocol survives any order a GPU could run the lanes in (and catches a missing
dependency), stores are sized exactly.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from advisor.catalog import load_hardware, load_model  # noqa: E402
from advisor.documents import Workload  # noqa: E402
from advisor.opgraph import build_graph  # noqa: E402
from advisor.plans import make_plan  # noqa: E402
from backend import model as M  # noqa: E402
from backend.checkpoint import HFWeights  # noqa: E402
from backend.command import run_plan  # noqa: E402
from backend.executor import Executor  # noqa: E402
from backend.lanes import DeadlockError, EmulatedLanes, SerialLanes  # noqa: E402
from backend.runtime import Capacity, Runtime  # noqa: E402
from backend.stores import PAGE, HostSlab, HostStores, Piece, StoreShape  # noqa: E402

CPU = torch.device("cpu")
ATOL = 5e-5  # fp32: logits of magnitude ~10 agree to ~1e-5


def hf_model(spec):
    """A transformers model with spec's shapes and random weights (biases and norms too)."""
    if spec.family == "opt":
        config = transformers.OPTConfig(
            vocab_size=spec.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.num_layers,
            ffn_dim=spec.ffn_hidden, num_attention_heads=spec.num_heads, max_position_embeddings=spec.max_positions,
            word_embed_proj_dim=spec.hidden, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
        model = transformers.OPTForCausalLM(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=spec.vocab_size, hidden_size=spec.hidden, intermediate_size=spec.ffn_hidden,
            num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_positions,
            rms_norm_eps=spec.norm_eps, tie_word_embeddings=False, rope_theta=spec.rope_theta)
        model = transformers.LlamaForCausalLM(config)
    model.config._attn_implementation = "eager"
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.15 * noise)
    return model.eval()


def hf_greedy(model, ids, new_tokens):
    """Greedy decoding by full forward passes (no cache): logits [new, batch, vocab], tokens [new, batch]."""
    seq, logits = ids, []
    with torch.no_grad():
        for _ in range(new_tokens):
            last = model(seq).logits[:, -1].float()
            logits.append(last)
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return torch.stack(logits), seq[:, ids.shape[1]:].t()


def execute(plan, weights, ids, lanes=None):
    _, out = run_plan(plan, CPU, weights, ids, keep_logits=True, lanes=lanes, measure_overhead=False)
    return out["logits"], out["tokens"]


def plan_for(spec, batch=4, prompt=12, gen=5, gpu_batches=1, **choices):
    wl = Workload(batch=batch, prompt_len=prompt, gen_len=gen, gpu_batches=gpu_batches)
    return make_plan(spec, load_hardware("cpu-generic"), wl, **choices)


CONFIGS = [
    dict(splits=0, chunks=1),
    dict(splits=6, chunks=1),
    dict(splits=12, chunks=1),
    dict(splits=6, chunks=3),
    dict(splits=12, chunks=4, schedule="column", gpu_batches=2),
    dict(splits=0, chunks=2, schedule="column", gpu_batches=2),
    dict(splits=6, chunks=2, schedule="column", gpu_batches=2, weights_gpu_layers=0),
    dict(splits=6, chunks=2, schedule="row", gpu_batches=2, weights_gpu_layers=1),
    dict(splits=[0, 12, 5, 13], chunks=2),  # the split changes per step
    dict(splits=9, chunks=2, resident_kv_layers=1),
    # what the planner now often picks: several GPU batches in the row schedule, some KV resident
    dict(splits=6, chunks=2, resident_kv_layers=1, schedule="row", gpu_batches=4),
    dict(offload=False),  # the resident path
]


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama", "tiny-llama-gqa"])
def test_every_configuration_matches_transformers_logits_then_tokens(name):
    spec = load_model(name)
    reference = hf_model(spec)
    ids = torch.randint(0, spec.vocab_size, (4, 12), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_tokens = hf_greedy(reference, ids, 5)
    weights = HFWeights.from_state_dict(reference.state_dict())
    for config in CONFIGS:
        config = dict(config)
        plan = plan_for(spec, gpu_batches=config.pop("gpu_batches", 1), **config)
        logits, tokens = execute(plan, weights, ids)
        assert torch.allclose(logits, ref_logits, atol=ATOL, rtol=1e-5), \
            f"{name} {config}: max |Δlogit| {(logits - ref_logits).abs().max():.2e}"
        assert torch.equal(tokens, ref_tokens), f"{name} {config}"


def _three_layers(name):
    return load_model(name).model_copy(update={"num_layers": 3})


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama-gqa"])
def test_any_order_a_gpu_could_run_the_lanes_in_gives_the_same_tokens(name):
    """Three layers, so the two buffer slots alternate between different layers' data."""
    spec = _three_layers(name)
    ids = torch.randint(0, spec.vocab_size, (4, 10), generator=torch.Generator().manual_seed(2))
    for config in (dict(splits=5, chunks=2, weights_gpu_layers=0),
                   dict(splits=[0, 10, 4], chunks=3, schedule="column", gpu_batches=2, weights_gpu_layers=1)):
        plan = plan_for(spec, prompt=10, gen=4, gpu_batches=config.pop("gpu_batches", 1), **config)
        serial_logits, serial_tokens = execute(plan, M.RandomWeights(3), ids)
        for seed in range(4):
            logits, tokens = execute(plan, M.RandomWeights(3), ids, EmulatedLanes(seed))
            assert torch.equal(tokens, serial_tokens)
            assert torch.allclose(logits, serial_logits, atol=1e-6)


def test_the_emulated_lanes_catch_a_missing_dependency(monkeypatch):
    """Drop the loads' buffer-free dependencies: some order then overwrites a slot still being read."""
    import backend.executor as executor_module

    spec = _three_layers("tiny-llama")
    ids = torch.randint(0, spec.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    plan = plan_for(spec, batch=2, prompt=10, gen=5, splits=5, chunks=2, weights_gpu_layers=0)
    reference, _ = execute(plan, M.RandomWeights(3), ids)

    def broken(p):
        graph = build_graph(p)
        for op in graph.operations:
            if op.kind.startswith("load_"):
                op.deps = [d for d in op.deps if "store" in d]
        return graph

    monkeypatch.setattr(executor_module, "build_graph", broken)
    differs = 0
    for seed in range(6):
        logits, _ = execute(plan, M.RandomWeights(3), ids, EmulatedLanes(seed))
        differs += not torch.allclose(logits, reference, atol=1e-6)
    assert differs >= 1


def test_emulated_lanes_report_a_deadlock():
    lanes = EmulatedLanes(0, eagerness=0.0)
    lanes.start()
    lanes.submit("a", "gpu", lambda: None, ["b"])
    with pytest.raises(DeadlockError):
        lanes.finish()


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama", "tiny-llama-gqa"])
def test_recomputed_kv_equals_transferred_kv(name):
    """Store both the activations and the KV of every prompt token, recompute, compare."""
    spec = load_model(name)
    ids = torch.randint(0, spec.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    plan = plan_for(spec, batch=2, gen=3, splits=[0, 12])  # act of [0, 12) and KV from 0 are kept
    assert plan.store.act_tokens == 12 and plan.store.kv_from == 0
    runtime = Runtime(Capacity.of(plan), CPU, M.RandomWeights(5))
    runtime.set_prompt(ids)
    Executor(runtime, plan).run(SerialLanes())
    stores = runtime.host_stores
    for layer in range(spec.num_layers):
        w = runtime.resident_weights[layer]
        act = stores.act(layer, 0, 0, 12)
        k_stored, v_stored = stores.kv(layer, 0, 0, 12)
        k, v = torch.empty_like(k_stored), torch.empty_like(v_stored)
        M.recompute_kv(spec, w, runtime.rotary, act, k, v, 0)
        assert torch.allclose(k, k_stored, atol=1e-5) and torch.allclose(v, v_stored, atol=1e-5)
        # and a chunk in the middle, rotated at its own positions
        M.recompute_kv(spec, w, runtime.rotary, act[5:9], k[5:9], v[5:9], 5)
        assert torch.allclose(k[5:9], k_stored[5:9], atol=1e-5)
    runtime.release()


def test_prefill_attention_in_parts_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(9, 5, 4, 8, generator=g)
    k, v = torch.randn(9, 5, 2, 8, generator=g), torch.randn(9, 5, 2, 8, generator=g)
    whole = M.attend_prefill(q, k, v)
    parts = M.attend_prefill(q, k, v, max_tokens=18)  # two sequences at a time
    assert torch.allclose(whole, parts, atol=1e-6)
    # the decode path agrees with the last row of causal attention
    last = M.attend_decode(q[-1], k, v)
    assert torch.allclose(last, whole[-1], atol=1e-5)


def test_host_slab_is_sized_exactly_and_carved_into_disjoint_page_aligned_views():
    pieces = [Piece(("a",), (3, 5), torch.float32), Piece(("b",), (1000, 7), torch.float16),
              Piece(("c",), (PAGE,), torch.uint8)]
    slab = HostSlab(pieces, pin=False)
    assert slab.total_bytes == PAGE + 4 * PAGE + PAGE  # 60 B → 1 page, 14000 B → 4 pages, 1 page
    spans = []
    for piece in pieces:
        t = slab.tensors[piece.key]
        assert t.shape == piece.shape and t.dtype == piece.dtype and t.data_ptr() % PAGE == 0
        spans.append((t.data_ptr(), t.data_ptr() + piece.nbytes))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    slab.release()
    slab.release()


def test_host_stores_index_tokens_absolutely_and_keep_exactly_the_policy():
    shape = StoreShape(batch=2, gpu_batches=3, hidden=8, kv_heads=2, head_dim=4, act_tokens=5, kv_from=3,
                       stored_tokens=10)
    stores = HostStores(shape, [1, 2], torch.float32, pin=False)
    per_layer = 3 * (5 * 2 * 8 + 2 * 7 * 2 * 2 * 4) * 4
    assert stores.total_bytes >= 2 * per_layer and stores.total_bytes - 2 * per_layer < 18 * PAGE
    k, v = stores.kv(2, 1, 3, 10)
    assert k.shape == (7, 2, 2, 4) and k.is_contiguous()
    k.fill_(1.0)
    assert stores.kv(2, 1, 4, 5)[0].sum() == 16
    with pytest.raises(AssertionError):
        stores.kv(1, 0, 2, 4)  # token 2 keeps no KV
    with pytest.raises(AssertionError):
        stores.act(1, 0, 0, 6)  # token 5 keeps no activation


def test_memory_count_matches_what_the_runtime_allocates():
    spec = load_model("tiny-llama-gqa")
    plan = plan_for(spec, batch=4, prompt=12, gen=5, gpu_batches=2, splits=6, chunks=2, weights_gpu_layers=1,
                    resident_kv_layers=1, schedule="column")
    capacity = Capacity.of(plan)
    need = Runtime.memory_need(capacity, CPU)
    runtime = Runtime(capacity, CPU, M.RandomWeights(0))
    device_tensors = ([w.flat for w in runtime.resident_weights.values()] + [w.flat for w in runtime.weight_slots]
                      + list(runtime.cache_k.values()) + list(runtime.cache_v.values())
                      + runtime.k_slots + runtime.v_slots + runtime.act_slots)
    allocated = sum(t.numel() * t.element_size() for t in device_tensors)
    counted = need.gpu["weights"] - (spec.vocab_size * spec.hidden * 2 + 2 * spec.hidden) * 4
    assert counted + need.gpu["weight slots"] + need.gpu["resident KV"] + need.gpu["KV and activation buffers"] \
        == allocated
    assert runtime.host_bytes == need.host["KV/activation store"] + runtime.host_weights.total_bytes
    runtime.release()


def test_a_runtime_refuses_a_plan_that_does_not_fit_it():
    spec = load_model("tiny-opt")
    small = plan_for(spec, splits=4)
    runtime = Runtime(Capacity.of(small), CPU, M.RandomWeights(0))
    with pytest.raises(ValueError, match="activation"):
        Executor(runtime, plan_for(spec, splits=8))
    with pytest.raises(ValueError):
        Executor(runtime, plan_for(spec, batch=2, splits=4))
    Executor(runtime, plan_for(spec, splits=4, chunks=3))  # differs only in chunking: fits
    runtime.release()


def test_rerunning_decode_steps_reproduces_the_same_tokens():
    spec = load_model("tiny-llama")
    plan = plan_for(spec, splits=6, chunks=2)
    runtime = Runtime(Capacity.of(plan), CPU, M.RandomWeights(1))
    runtime.set_prompt(torch.randint(0, spec.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0)))
    executor = Executor(runtime, plan)
    executor.run(SerialLanes())
    first = runtime.tokens.clone()
    runtime.tokens[2:] = 0
    executor.run(SerialLanes(), steps=range(1, 4))
    assert torch.equal(runtime.tokens, first)
    runtime.release()


def test_a_rerun_of_some_steps_keeps_every_order_a_gpu_needs_with_several_row_gpu_batches():
    """The timing-overhead reruns issue steps 1.. again; a dependency on a step outside the run was
    dropped, and with GPU batches run one after another, batch 1's first loads then raced batch 0's
    last attention over the same buffer slots (logits off by up to 0.05 in half of the emulated
    orders). Every order the emulated lanes may choose must give the same logits and tokens."""
    spec = load_model("tiny-opt")
    plan = plan_for(spec, batch=8, prompt=16, gen=6, gpu_batches=4, splits=16, chunks=2, weights_gpu_layers=1)
    runtime = Runtime(Capacity.of(plan), CPU, M.RandomWeights(0), keep_logits=True)
    runtime.set_prompt(torch.randint(0, spec.vocab_size, (8, 16), generator=torch.Generator().manual_seed(1)))
    executor = Executor(runtime, plan)
    executor.run(SerialLanes())
    tokens, logits = runtime.tokens.clone(), runtime.logits.clone()
    for seed in range(12):
        executor.run(EmulatedLanes(seed=seed), steps=range(1, 5))
        assert torch.equal(runtime.logits, logits) and torch.equal(runtime.tokens, tokens), seed
    runtime.release()


def test_cuda_lanes_issue_waits_events_and_times_in_order(monkeypatch):
    """CudaLanes' own logic on fake streams and events (the real ones need a GPU)."""
    import contextlib

    from backend import lanes as lanes_module

    log, clock = [], iter(range(1000))

    class FakeEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self, stream=None):
            self.t = next(clock)
            log.append(("record", stream.name))

        def elapsed_time(self, other):
            return float(other.t - self.t)

        def synchronize(self):
            pass

    class FakeStream:
        def __init__(self, device=None):
            self.name = f"s{len(streams)}"
            streams.append(self)

        def wait_event(self, event):
            log.append(("wait", self.name, event.t))

    streams = []
    monkeypatch.setattr(lanes_module, "_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    lanes = lanes_module.CudaLanes(torch.device("cuda"))
    lanes.start()
    first = lanes.submit("a", "h2d", lambda: log.append("a"), [])
    lanes.submit("b", "gpu", lambda: log.append("b"), [first])
    times = lanes.times()
    assert times["a"][0] <= times["a"][1] <= times["b"][0] <= times["b"][1]
    assert ("wait", lanes.streams["gpu"].name, first.t) in log
    assert log.index("a") < log.index("b")

    only_b = lanes_module.CudaLanes(torch.device("cuda"), timing={"b"})
    assert only_b.streams is lanes.streams and len(streams) == 3  # one set of streams per device
    only_b.start(expected_ops=2)
    first = only_b.submit("a", "h2d", lambda: log.append("a2"), [])
    only_b.submit("b", "gpu", lambda: log.append("b2"), [first])
    assert set(only_b.times()) == {"b"}
    assert ("wait", only_b.streams["gpu"].name, first.t) in log  # the untimed op is still waited for
    assert log.index("a2") < log.index("b2")


class FakeCudart:
    """Records cudaHostRegister/Unregister calls; fails the registration numbered `fail_at`."""

    def __init__(self, fail_at=None):
        self.registered, self.unregistered, self.fail_at = [], [], fail_at

    def cudaHostRegister(self, ptr, size, flags):
        if len(self.registered) + 1 == self.fail_at:
            self.fail_at = None
            return 2  # cudaErrorMemoryAllocation
        assert ptr % PAGE == 0 and size % PAGE == 0 and flags == 1
        self.registered.append((ptr, size))
        return 0

    def cudaHostUnregister(self, ptr):
        self.unregistered.append(ptr)
        return 0


def test_pinning_registers_each_piece_once_and_counts_what_is_locked(monkeypatch):
    fake = FakeCudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    pieces = [Piece((i,), (1000 * (i + 1), 3), torch.float16) for i in range(5)]
    seen = []
    slab = HostSlab(pieces, pin=True, progress=lambda done, total: seen.append((done, total)))
    assert slab.pinned_bytes == slab.total_bytes == sum(size for _, size in fake.registered)
    assert sorted(ptr for ptr, _ in fake.registered) == sorted(slab.tensors[p.key].data_ptr() for p in pieces)
    assert seen[-1] == (slab.total_bytes, slab.total_bytes)
    assert all(float(slab.tensors[p.key].abs().sum()) == 0 for p in pieces)  # touched (zero-filled)
    slab.release()
    assert sorted(fake.unregistered) == sorted(ptr for ptr, _ in fake.registered) and slab.pinned_bytes == 0


def test_a_failed_registration_unpins_what_was_pinned(monkeypatch):
    from backend.stores import PinError

    fake = FakeCudart(fail_at=3)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    with pytest.raises(PinError, match="error 2"):
        HostSlab([Piece((i,), (PAGE,), torch.uint8) for i in range(5)], pin=True)
    assert sorted(fake.unregistered) == sorted(ptr for ptr, _ in fake.registered)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_prefill_mlp_in_parts_equals_one_pass(name):
    spec = load_model(name)
    layout = M.LayerLayout(spec)
    flat = torch.empty(layout.numel)
    M.RandomWeights(0).fill_layer(spec, layout, 0, flat)
    weights = M.LayerWeights(flat, layout, spec)
    x = torch.randn(7, 3, spec.hidden, generator=torch.Generator().manual_seed(1))
    whole = M.mlp(spec, weights, x, max_rows=10**6)
    assert torch.allclose(M.mlp(spec, weights, x, max_rows=4), whole, atol=1e-6)  # 21 rows in 6 parts


def test_a_single_new_token_offloaded_stores_nothing_and_matches_transformers():
    """With --gen-len 1 no decode step reads the store back: the plan keeps none of it (before,
    it pinned the whole prompt's KV), and the one token is HF's."""
    spec = load_model("tiny-opt")
    reference = hf_model(spec)
    ids = torch.randint(0, spec.vocab_size, (4, 12), generator=torch.Generator().manual_seed(3))
    ref_logits, ref_tokens = hf_greedy(reference, ids, 1)
    plan = plan_for(spec, gen=1, splits=[], chunks=2)
    assert plan.offload and plan.store.act_tokens == 0 and plan.store.kv_from == plan.workload.stored_tokens
    capacity = Capacity.of(plan)
    assert Runtime.memory_need(capacity, CPU).host["KV/activation store"] == 0
    logits, tokens = execute(plan, HFWeights.from_state_dict(reference.state_dict()), ids)
    assert torch.allclose(logits, ref_logits, atol=ATOL, rtol=1e-5) and torch.equal(tokens, ref_tokens)
