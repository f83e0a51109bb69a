"""backend.measure: the timing-overhead figure against closed forms on scripted runs."""

import pytest
import torch

from advisor.catalog import load_hardware, load_model
from advisor.documents import Workload
from advisor.opgraph import build_graph, op_id
from advisor.plans import make_plan
from backend.executor import RunResult
from backend.lanes import SerialLanes
from backend.measure import timing_overhead


def test_serial_lanes_time_only_the_named_operations():
    ran = []
    lanes = SerialLanes(timing={"b"})
    lanes.start()
    for op_id in ("a", "b", "c"):
        lanes.submit(op_id, "gpu", lambda op_id=op_id: ran.append(op_id), [])
    assert ran == ["a", "b", "c"]
    assert set(lanes.times()) == {"b"}


class ScriptedExecutor:
    """Answers `run` with made-up sample times: a head of `head` ms, then `step` ms per decode step,
    by whether every operation is timed or only the step boundaries; records what it was asked."""

    def __init__(self, plan, timed=(5.0, 10.0), reference=(3.0, 8.0)):
        self.plan, self.ops = plan, build_graph(plan).operations
        self.rt = type("Runtime", (), {"device": torch.device("cpu")})()
        self.shapes = {True: timed, False: reference}
        self.asked = []

    def run(self, lanes, steps):
        steps = list(steps)
        full = lanes.timing is True
        self.asked.append((lanes.timing, steps))
        head, step = self.shapes[full]
        L = self.plan.model.num_layers
        times, end = {}, 0.0
        for n, s in enumerate(steps):
            end += (head if n == 0 else step) / 1e3
            times[op_id(s, L, 0, "sample")] = (end - 1e-4, end)
        assert set(times) <= {op.id for op in self.ops}
        return RunResult(times=times if full else {k: v for k, v in times.items() if k in lanes.timing},
                         moved_bytes={}, wall_s=end + 2e-3)


@pytest.fixture
def plan():
    wl = Workload(batch=2, prompt_len=8, gen_len=7)
    return make_plan(load_model("tiny-opt"), load_hardware("cpu-generic"), wl, splits=4)


def test_overhead_is_the_step_ratio_with_each_runs_head_left_out(plan):
    executor = ScriptedExecutor(plan)
    result = timing_overhead(executor, range(1, 5), repeats=4)
    assert result["overhead"] == pytest.approx(10 / 8 - 1)
    assert result["timed_step_s"] == pytest.approx(0.010) and result["reference_step_s"] == pytest.approx(0.008)
    # whole runs: 5 + 3·10 ms (+ 2 ms tail) against 3 + 3·8 ms (+ 2 ms tail)
    assert result["run_overhead"] == pytest.approx(37 / 29 - 1)
    assert result["timed_head_s"] == pytest.approx(0.005) and result["reference_head_s"] == pytest.approx(0.003)
    assert result["pairs"] == 4 and result["steps_per_run"] == 4
    # the reference times exactly the step boundaries of those steps; which run goes first alternates
    samples = frozenset(op.id for op in executor.ops if op.kind == "sample" and 1 <= op.step <= 4)
    assert [timing for timing, _ in executor.asked] == [True, samples, samples, True] * 2
    assert all(steps == [1, 2, 3, 4] for _, steps in executor.asked)


def test_overhead_needs_two_consecutive_steps(plan):
    executor = ScriptedExecutor(plan)
    assert timing_overhead(executor, [2]) is None
    assert timing_overhead(executor, [1, 3]) is None
    assert executor.asked == []


def test_overhead_on_a_real_cpu_run_is_measured_on_the_same_steps(plan):
    from backend import model as M
    from backend.executor import Executor
    from backend.runtime import Capacity, Runtime

    runtime = Runtime(Capacity.of(plan), torch.device("cpu"), M.RandomWeights(0))
    try:
        runtime.set_prompt(torch.randint(0, plan.model.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0)))
        executor = Executor(runtime, plan)
        executor.run(SerialLanes())
        tokens = runtime.tokens.clone()
        result = timing_overhead(executor, range(1, 4), repeats=2)
        assert result["pairs"] == 2 and result["timed_step_s"] > 0 and result["reference_step_s"] > 0
        assert torch.equal(runtime.tokens, tokens)  # rerunning the steps changed nothing
    finally:
        runtime.release()


def test_a_partial_runs_first_step_of_a_later_row_batch_starts_where_the_batch_before_it_ended():
    """Row schedule, 2 GPU batches, a run of steps 1-2 (batch 0's, then batch 1's): batch 1's first
    step of the run starts when batch 0's last sample ends, not at the run's origin (which counted
    all of batch 0's steps into it: the 'head' figures came out several times a step)."""
    from backend.executor import decode_step_times

    model = load_model("tiny-opt")
    plan = make_plan(model, load_hardware("cpu-generic"), Workload(batch=4, prompt_len=8, gen_len=4, gpu_batches=2),
                     splits=4)
    L = model.num_layers
    ends = {(1, 0): 1.0, (2, 0): 2.0, (1, 1): 3.5, (2, 1): 4.5}
    times = {op_id(step, L, batch, "sample"): (end - 0.1, end) for (step, batch), end in ends.items()}
    assert decode_step_times(plan, times, [1, 2]) == {1: 1.0 + (3.5 - 2.0), 2: 1.0 + 1.0}
    column = plan.model_copy(update={"schedule": "column"})
    assert decode_step_times(column, times, [1, 2]) == {1: 3.5, 2: 4.5 - 3.5}
