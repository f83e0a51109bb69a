"""The TUI's computations without a terminal: plans equal `advisor plan`'s, the chart's sweep agrees
with the scheduler, the timeline's waits and the per-lane comparison are right on made-up traces."""

from __future__ import annotations

import pytest

from advisor.documents import Trace, TraceRecord, TraceSummary
from advisor.errors import UserError
from tui.explore import (
    Explorer, Inputs, LaneRow, compare_lanes, describe_model, gpu_waits, lane_busy_per_step, timeline_copy,
)
from tui.widgets.chart import ChartData, SplitChart


def test_default_is_opt_67b_shapes_with_8k_positions_where_the_kv_cache_does_not_fit():
    explorer = Explorer()
    model = explorer.model(Inputs().model)
    assert describe_model(model) == "opt-6.7b-8k (OPT-6.7B shapes, 8k positions)"
    optimum = explorer.plan(Inputs(), None)
    assert optimum.offload and optimum.resident_kv_layers < model.num_layers


def test_forced_split_is_the_split_of_every_step_and_plans_are_cached():
    explorer = Explorer()
    p = explorer.plan(Inputs(), 3700)
    assert set(p.splits) == {3700}
    assert explorer.plan(Inputs(), 3700) is p


def test_refused_inputs_raise_the_schedulers_message_every_time():
    explorer = Explorer()
    inputs = Inputs(model="opt-6.7b")  # 2048 positions: prompt 4096 cannot run
    for _ in range(2):
        with pytest.raises(UserError, match="positions"):
            explorer.plan(inputs, None)


def test_sweep_minimum_matches_the_lp_optimum_on_the_paper_profile():
    explorer = Explorer()
    inputs = Inputs(model="opt-6.7b", hardware="kvpr-paper", batch=8, prompt_len=1024, gen_len=8,
                    gpu_kv_budget_gb=0.0)
    optimum = explorer.plan(inputs, None)
    curve = explorer.curve(optimum)
    assert curve is not None and len(curve.splits) == inputs.prompt_len + 1
    assert abs(curve.best_split() - optimum.splits[0]) <= 0.02 * inputs.prompt_len
    assert 0 < optimum.splits[0] < inputs.prompt_len


def test_timeline_copy_keeps_the_choices_and_shows_a_middle_step():
    plan = Explorer().plan(Inputs(), 2500)
    short, step = timeline_copy(plan)
    assert short.workload.gen_len == 4 and short.splits == plan.splits[:3] and step == 1
    assert (short.chunks, short.resident_kv_layers, short.store) == (plan.chunks, plan.resident_kv_layers, plan.store)


def _trace(records, step_times=(1.0,), warmup=0) -> Trace:
    recs = [TraceRecord(id=i, lane=lane, start_s=a, end_s=b) for i, lane, a, b in records]
    summary = TraceSummary(ttft_s=1.0, step_times_s=list(step_times), decode_step_s=sum(step_times) / len(step_times),
                           decode_tokens_per_s=1.0, warmup_steps_excluded=warmup)
    return Trace(source="simulated", plan_fingerprint="x", device="test", records=recs, summary=summary)


TRACE = [
    ("sp.L1.b0.sample", "gpu", 0.0, 1.0),
    ("s0.L0.b0.load_kv", "h2d", 1.0, 3.0),
    ("s0.L0.b0.attention", "gpu", 3.0, 4.0),   # the GPU waited [1, 3)
    ("s0.L0.b0.mlp", "gpu", 4.5, 5.0),         # and [4, 4.5)
    ("s0.L0.b0.store_kv", "d2h", 5.0, 5.5),
    ("s0.L1.b0.sample", "gpu", 5.0, 6.0),
]


def test_gpu_waits_are_the_idle_time_inside_the_step():
    step, idle, longest = gpu_waits(_trace(TRACE), 0)
    assert step == pytest.approx(5.0) and idle == pytest.approx(2.5) and longest == pytest.approx(2.0)


def test_lane_busy_per_step_and_the_comparison_error():
    predicted = _trace(TRACE, step_times=(5.0,))
    assert lane_busy_per_step(predicted) == {"h2d": 2.0, "gpu": 2.5, "d2h": 0.5}
    slower = [(i, lane, a * 2, b * 2) for i, lane, a, b in TRACE]
    measured = _trace(slower, step_times=(10.0,))
    rows = {row.name: row for row in compare_lanes(predicted, measured)}
    assert rows["gpu busy / step"].measured_s == pytest.approx(5.0)
    assert rows["decode step"].error == pytest.approx(-0.5)
    assert LaneRow("x", 1.0, None).error is None


def test_chart_renders_markers_and_a_message_without_data():
    chart = SplitChart()
    assert "solving" in str(chart.data.message)
    explorer = Explorer()
    optimum = explorer.plan(Inputs(), None)
    data = ChartData(curve=explorer.curve(optimum), optimum_split=4096, current_split=2000,
                     current_step_s=0.3, top=4096)
    chart.data = data
    lines = chart._legend(60) + chart._panel(40, 6, data.curve.step_s * 1e3, 300.0, [], "step ms") + chart._axis(40)
    text = "\n".join(line.plain for line in lines)
    assert "optimum 4096" in text and "current 2000" in text and "●" in text and "▲" in text
