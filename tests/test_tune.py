"""`advisor tune`: the loop's candidates, its convergence to the true profile's plan, the CPU run."""

import re

import numpy as np
import pytest

from advisor.catalog import load_hardware, load_model
from advisor.cli import main
from advisor.documents import GemmCurve, HardwareProfile, Plan, RatePoint, Workload, load_document, write_document
from advisor.plans import make_plan
from advisor.scheduler import Request, plan as solve
from advisor.tune import neighbours, same_plan, short_plan, tune
from simulator import simulate_plan


def test_neighbours_move_the_split_by_a_tenth_and_halve_and_double_the_chunks():
    tiny, cpu = load_model("tiny-opt"), load_hardware("cpu-generic")
    base = make_plan(tiny, cpu, Workload(batch=8, prompt_len=50, gen_len=4, gpu_batches=2), splits=[20, 21, 52],
                     chunks=2, schedule="column", weights_gpu_layers=1)
    found = {label: p for label, p in neighbours(base)}
    assert found["split -5"].splits == [15, 16, 47]
    assert found["split +5"].splits == [25, 26, 52]  # never past the context (50 + step)
    assert found["4 chunks"].chunks == 4 and found["1 chunks"].chunks == 1
    assert found["4 GPU batches"].workload.gpu_batches == 4 and found["1 GPU batches"].workload.gpu_batches == 1
    for p in found.values():  # everything else as in the base plan
        assert p.workload.batch == 8 and p.weights_gpu_layers == 1 and p.schedule == "column"
    # the row schedule too (the planner now splits it into GPU batches), to the nearest divisors
    row = make_plan(tiny, cpu, Workload(batch=12, prompt_len=50, gen_len=4, gpu_batches=3), splits=20,
                    chunks=2, schedule="row", weights_gpu_layers=1)
    counts = sorted(p.workload.gpu_batches for label, p in neighbours(row) if label.endswith("GPU batches"))
    assert counts == [2, 4]


def test_short_plan_keeps_batch_prompt_and_first_splits():
    tiny, cpu = load_model("tiny-opt"), load_hardware("cpu-generic")
    full = make_plan(tiny, cpu, Workload(batch=4, prompt_len=32, gen_len=20), splits=list(range(10, 29)), chunks=2)
    short = short_plan(full, steps=3, warmup=1)
    assert short.workload.gen_len == 5 and short.workload.decode_steps == 4
    assert short.splits == [10, 11, 12, 13] and short.chunks == 2 and short.workload.batch == 4
    assert short.store.act_tokens == 13 and short.store.kv_from == 10


def test_the_loop_finds_the_plan_the_true_profile_gives(h100, opt67):
    """Measurements simulated on a 'true' machine whose GEMMs are 20× slower than the profile's:
    the first plan recomputes everything, the tuned one must be the true machine's own plan."""
    truth = h100.model_copy(update={"gemm": [
        GemmCurve(n=c.n, k=c.k, points=[RatePoint(m=p.m, flops=p.flops * 0.05) for p in c.points])
        for c in h100.gemm]})

    def measure_on_truth(plans, device, warmup):
        rng = np.random.default_rng(len(plans))
        traces = []
        for p in plans:
            trace = simulate_plan(p.model_copy(update={"hardware": truth}))
            records = [r.model_copy(update={"end_s": r.start_s + (r.end_s - r.start_s) * (1 + rng.uniform(-.02, .02))})
                       for r in trace.records]
            summary = trace.summary.model_copy(update={"warmup_steps_excluded": warmup})
            traces.append(trace.model_copy(update={"records": records, "source": "measured", "device": "cuda",
                                                   "summary": summary}))
        return traces

    request = Request(opt67, h100, batch=8, prompt_len=2000, gen_len=48, gpu_kv_budget_bytes=0)
    lines = []
    outcome = tune(request, "cuda", rounds=4, steps=4, execute=measure_on_truth, log=lines.append)
    ideal = solve(Request(opt67, truth, batch=8, prompt_len=2000, gen_len=48, gpu_kv_budget_bytes=0))
    assert not same_plan(outcome.first_plan, ideal)
    assert same_plan(outcome.final_plan, ideal), (outcome.final_plan.splits[:3], ideal.splits[:3])
    assert len(outcome.rounds) <= 4 and "stopped changing" in outcome.stopped
    assert outcome.final.measured_s < 0.5 * outcome.first.measured_s  # the tuned plan is really faster
    assert outcome.final.predicted_s == pytest.approx(outcome.final.measured_s, rel=0.05)
    assert abs(outcome.first.predicted_s / outcome.first.measured_s - 1) > 0.5  # the start was far off
    assert outcome.profile.provenance.calibrated_from and outcome.final_plan.hardware == outcome.profile


def test_cli_tune_on_the_cpu_ends_within_its_rounds_and_reports(tmp_path, capsys):
    cpu = load_hardware("cpu-generic")
    wrong = cpu.model_copy(update=dict(  # copies 50× too slow, GEMMs 20× too fast: recompute looks free
        name="cpu-wrong", h2d=cpu.h2d.model_copy(update={"bandwidth_Bps": 1e8}),
        gemm=[GemmCurve(n=c.n, k=c.k, points=[RatePoint(m=p.m, flops=p.flops * 20) for p in c.points])
              for c in cpu.gemm]))
    write_document(tmp_path / "wrong.json", wrong)
    code = main(["tune", "--model", "tiny-opt", "--hardware", str(tmp_path / "wrong.json"), "--batch", "8",
                 "--prompt-len", "48", "--gen-len", "32", "--gpu-kv-budget", "0", "--schedule", "column",
                 "--device", "cpu", "--rounds", "3", "--steps", "3",
                 "-o", str(tmp_path / "tuned.json"), "--profile-output", str(tmp_path / "hw.json")])
    printed = capsys.readouterr().out
    assert code == 0
    rounds = re.findall(r"^round (\d+):", printed, re.M)
    assert 1 <= len(rounds) <= 3
    first = re.search(r"^first plan: .*predicted ([\d.]+) ms .*measured ([\d.]+) ms", printed, re.M)
    final = re.search(r"^final plan: .*predicted ([\d.]+) ms .*measured ([\d.]+) ms", printed, re.M)
    assert first and final, printed
    assert all(float(x) > 0 for x in first.groups() + final.groups())
    plan = load_document(Plan, tmp_path / "tuned.json")
    profile = load_document(HardwareProfile, tmp_path / "hw.json")
    assert plan.hardware == profile and profile.name == "cpu-wrong-tuned"
    assert profile.provenance.calibrated_from and plan.workload.gen_len == 32
    # the measured copies were far faster than the wrong profile said
    assert profile.h2d.bandwidth_Bps > 5 * wrong.h2d.bandwidth_Bps


def test_tune_refuses_a_workload_without_a_decode_step(h100, opt67):
    from advisor.errors import UserError

    def never(plans, device, warmup):
        raise AssertionError("nothing should run")

    with pytest.raises(UserError, match="--gen-len 1 has no decode step"):
        tune(Request(opt67, h100, batch=8, prompt_len=2000, gen_len=1), "cuda", execute=never)


def test_candidate_runs_show_progress_to_the_end():
    from advisor.tune import execute_plans

    tiny, cpu = load_model("tiny-opt"), load_hardware("cpu-generic")
    plans = [make_plan(tiny, cpu, Workload(batch=2, prompt_len=16, gen_len=4, gpu_batches=g), splits=s,
                       schedule="column") for g, s in ((1, 4), (1, 8), (2, 4))]
    seen = []
    traces = execute_plans(plans, "cpu", 1, progress=lambda *update: seen.append(update), what="round 1")
    assert all(t is not None for t in traces)
    total = 4 + 4 + 8  # tokens sampled: gen_len × GPU batches of each plan
    assert seen[0] == ("round 1", 0, total) and seen[-1] == ("round 1", total, total)
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and len(set(done)) == total + 1


def test_each_round_runs_under_its_own_progress_bars(h100, opt67):
    """backend.progress.Progress (what execute and profile show) is opened around each round's runs
    and closed before the round's lines are logged."""
    events = []

    class Bars:
        def __enter__(self):
            events.append("open")
            return self

        def __exit__(self, *exc):
            events.append("close")

        def update(self, what, done, total):
            events.append("update")

    def measure(plans, device, warmup):
        events.append(f"run {len(plans)}")
        return [simulate_plan(p).model_copy(update={"source": "measured", "device": "cuda"}) for p in plans]

    request = Request(opt67, h100, batch=8, prompt_len=2000, gen_len=48, gpu_kv_budget_bytes=0)
    outcome = tune(request, "cuda", rounds=2, steps=4, execute=measure, log=lambda line: events.append("log"),
                   progress=Bars)
    runs = [e for e in events if e.startswith("run")]
    assert runs and events.count("open") == events.count("close") == len(runs)
    for i, event in enumerate(events):
        if event.startswith("run"):
            assert events[i - 1] == "open" and events[i + 1] == "close"
    assert outcome.rounds


def test_cli_tune_says_how_many_steps_a_short_workload_really_measures(tmp_path, capsys, monkeypatch):
    import advisor.tune
    from advisor.errors import UserError
    from advisor.tune import candidate_steps

    assert candidate_steps(48, 4, 2) == (2, 4) and candidate_steps(3, 4, 2) == (1, 1)
    assert candidate_steps(2, 4, 1) == (0, 1)

    def stop(*args, **kwargs):
        raise UserError("stopped here")

    monkeypatch.setattr(advisor.tune, "tune", stop)
    assert main(["tune", "--model", "tiny-opt", "--hardware", "cpu-generic", "--batch", "2", "--prompt-len", "16",
                 "--gen-len", "3", "--device", "cpu", "-o", str(tmp_path / "p.json"),
                 "--profile-output", str(tmp_path / "h.json")]) == 2
    header = capsys.readouterr().out.splitlines()[0]
    assert "1 decode step(s) per candidate after 1 warm-up step(s) (the workload has 2 decode step(s)" in header
