"""`advisor calibrate`: known parameters recovered from noisy synthetic traces, bad input refused.

Synthetic measurements are the simulator's predicted traces on a profile with known numbers
(the "truth"), with ±2% multiplicative noise on every operation's duration, relabelled as
measured on the device. Calibration starts from the shipped profile and must find the truth.
"""

import json
import statistics

import numpy as np
import pytest

from advisor import timemodel
from advisor.calibrate import calibrate, calibrate_run, make_run
from advisor.catalog import load_hardware, load_model
from advisor.cli import main
from advisor.documents import GemmCurve, HardwareProfile, Plan, RatePoint, Trace, Workload, load_document, write_document
from advisor.plans import make_plan
from simulator import simulate_plan


def scaled_curves(hw, factor):
    return [GemmCurve(n=c.n, k=c.k, points=[RatePoint(m=p.m, flops=p.flops * factor) for p in c.points])
            for c in hw.gemm]


def h100_truth(h100):
    """The H100 profile with every calibrated parameter moved to a known value."""
    return h100.model_copy(update=dict(
        h2d=h100.h2d.model_copy(update=dict(latency_s=12e-6, bandwidth_Bps=40e9)),
        d2h=h100.d2h.model_copy(update=dict(latency_s=6e-6, bandwidth_Bps=48e9)),
        bidirectional_total_Bps=70e9,
        attention_Bps=1.5e12,
        memory_bound_Bps=2.0e12,
        launch_overhead_s=7e-6,
        gemm=scaled_curves(h100, 0.8),
    ))


def noisy_measurement(plan, truth, seed, device="cuda", noise=0.02, warmup=0, slow_warmup=1.0):
    """The simulated trace of `plan` on `truth`, durations × (1 ± noise), as a measured trace."""
    trace = simulate_plan(plan.model_copy(update={"hardware": truth}))
    rng = np.random.default_rng(seed)
    records = []
    for r in trace.records:
        factor = 1 + rng.uniform(-noise, noise)
        step = r.id.split(".")[0][1:]
        if step != "p" and int(step) < warmup:
            factor *= slow_warmup
        records.append(r.model_copy(update={"end_s": r.start_s + (r.end_s - r.start_s) * factor}))
    summary = trace.summary.model_copy(update={"warmup_steps_excluded": warmup})
    return trace.model_copy(update={"records": records, "source": "measured", "device": device,
                                    "summary": summary})


H100_RUNS = [  # batch, prompt, split, chunks, layers with weights on the GPU
    (8, 512, 300, 2, 32),
    (4, 1024, 600, 4, 28),
    (16, 256, 100, 1, 32),
    (8, 768, 0, 1, 30),
]


def h100_runs(h100, opt67, truth, gen_len=6):
    runs = []
    for i, (batch, prompt, split, chunks, on_gpu) in enumerate(H100_RUNS):
        plan = make_plan(opt67, h100, Workload(batch=batch, prompt_len=prompt, gen_len=gen_len),
                         splits=split, chunks=chunks, weights_gpu_layers=on_gpu)
        runs.append(make_run(f"run{i}.json", plan, noisy_measurement(plan, truth, seed=i), h100))
    return runs


def within(value, expected, tolerance=0.05):
    return abs(value / expected - 1) <= tolerance


def test_calibration_recovers_known_parameters_from_noisy_synthetic_traces(h100, opt67):
    truth = h100_truth(h100)
    runs = h100_runs(h100, opt67, truth)
    fitted = calibrate(h100, runs).profile

    assert within(fitted.h2d.latency_s, 12e-6) and within(fitted.h2d.bandwidth_Bps, 40e9)
    assert within(fitted.d2h.latency_s, 6e-6) and within(fitted.d2h.bandwidth_Bps, 48e9)
    assert within(fitted.bidirectional_total_Bps, 70e9)
    assert within(fitted.attention_Bps, 1.5e12)
    assert within(fitted.memory_bound_Bps, 2.0e12)
    assert within(fitted.launch_overhead_s, 7e-6)
    # every GEMM rate the traces can see on its own: the only GEMM of its operation, and
    # compute-bound on the true profile (memory-bound ones do not depend on the rate)
    checked = 0
    for run in runs:
        for op in run.graph.operations:
            if len(op.gemms) != 1:
                continue
            m, n, k = op.gemms[0]
            rate = timemodel.curve_for(truth, n, k).at(m)
            if 2.0 * m * n * k / rate > (n * k + m * k + m * n) * 2 / truth.memory_bound_Bps:
                assert within(timemodel.curve_for(fitted, n, k).at(m), rate), (n, k, m)
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("total", [None, 70e9])
def test_the_two_direction_total_is_recovered_exactly_from_noiseless_traces(h100, opt67, total):
    """Noiseless traces of the H100 profile itself, and of it with a lower two-direction total: the
    fit gives back the total it was simulated with. It counted a copy's latency as shared transfer
    time, and moved the H100's own 90.2 GB/s to 101.6."""
    truth = h100 if total is None else h100.model_copy(update={"bidirectional_total_Bps": total})
    opt13 = load_model("opt-1.3b")
    plans = [make_plan(opt67, h100, Workload(batch=8, prompt_len=512, gen_len=6), splits=400, chunks=4,
                       weights_gpu_layers=32),
             # small activation chunks (0.8 MB), whose latency is a large share of their time
             make_plan(opt13, h100, Workload(batch=16, prompt_len=256, gen_len=6), splits=100, chunks=8,
                       weights_gpu_layers=12)]
    runs = [make_run(f"run{i}.json", plan, noisy_measurement(plan, truth, seed=i, noise=0.0), h100)
            for i, plan in enumerate(plans)]
    fitted = calibrate(h100, runs).profile
    assert fitted.bidirectional_total_Bps == pytest.approx(truth.bidirectional_total_Bps, rel=1e-6)


def test_calibrated_profile_predicts_a_held_out_plan_within_5_percent(h100, opt67):
    truth = h100_truth(h100)
    fitted = calibrate(h100, h100_runs(h100, opt67, truth)).profile
    held_out = make_plan(opt67, h100, Workload(batch=8, prompt_len=640, gen_len=5), splits=400, chunks=2,
                         weights_gpu_layers=32)
    true_steps = simulate_plan(held_out.model_copy(update={"hardware": truth})).summary.step_times_s
    fitted_steps = simulate_plan(held_out.model_copy(update={"hardware": fitted})).summary.step_times_s
    shipped_steps = simulate_plan(held_out).summary.step_times_s
    for true, got, shipped in zip(true_steps, fitted_steps, shipped_steps):
        assert within(got, true, 0.05)
        assert not within(shipped, true, 0.10)  # the starting profile was really off


def test_cpu_mode_copies_fit_exactly_and_lanes_stay_apart():
    cpu, tiny = load_hardware("cpu-generic"), load_model("tiny-opt")
    truth = cpu.model_copy(update=dict(
        h2d=cpu.h2d.model_copy(update=dict(latency_s=4e-6, bandwidth_Bps=2e9)),
        d2h=cpu.d2h.model_copy(update=dict(latency_s=3e-6, bandwidth_Bps=3e9)),
        launch_overhead_s=20e-6, gemm=scaled_curves(cpu, 0.25),
    ))
    runs = []
    for i, (batch, prompt, split) in enumerate([(4, 32, 16), (8, 48, 0), (2, 64, 40)]):
        plan = make_plan(tiny, cpu, Workload(batch=batch, prompt_len=prompt, gen_len=5), splits=split, chunks=2,
                         weights_gpu_layers=1)
        runs.append(make_run(f"cpu{i}.json", plan, noisy_measurement(plan, truth, i, device="cpu", noise=0.0), cpu))
    fitted = calibrate(cpu, runs).profile
    assert fitted.device_kind == "cpu" and not fitted.lanes_overlap and fitted.bidirectional_total_Bps is None
    assert fitted.h2d.latency_s == pytest.approx(4e-6, rel=1e-4)
    assert fitted.h2d.bandwidth_Bps == pytest.approx(2e9, rel=1e-4)
    assert fitted.d2h.bandwidth_Bps == pytest.approx(3e9, rel=1e-4)
    assert fitted.launch_overhead_s == pytest.approx(20e-6, rel=0.02)


def test_warmup_steps_are_left_out(h100, opt67):
    truth = h100_truth(h100)
    plan = make_plan(opt67, h100, Workload(batch=8, prompt_len=512, gen_len=7), splits=300, chunks=2,
                     weights_gpu_layers=32)
    clean = calibrate(h100, [make_run("a.json", plan, noisy_measurement(plan, truth, 1, warmup=2), h100)])
    slow = calibrate(h100, [make_run("b.json", plan, noisy_measurement(plan, truth, 1, warmup=2, slow_warmup=5.0),
                                     h100)])
    for field in ("attention_Bps", "memory_bound_Bps", "launch_overhead_s"):
        assert getattr(slow.profile, field) == pytest.approx(getattr(clean.profile, field), rel=1e-9)
    assert slow.profile.h2d.bandwidth_Bps == pytest.approx(clean.profile.h2d.bandwidth_Bps, rel=1e-9)


def test_the_profile_records_the_runs_it_was_calibrated_from(h100, opt67):
    runs = h100_runs(h100, opt67, h100_truth(h100))[:2]
    profile = calibrate(h100, runs).profile
    assert profile.name == "h100-pcie5-calibrated"
    for run in runs:
        assert any(run.name in used and run.trace.plan_fingerprint in used
                   for used in profile.provenance.calibrated_from)
    assert "calibration" in profile.provenance.sources


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path, h100, opt67):
    """plan.json and measured.json (a synthetic H100 measurement of it), and a second plan."""
    plan = make_plan(opt67, h100, Workload(batch=8, prompt_len=512, gen_len=5), splits=300, chunks=2,
                     weights_gpu_layers=32)
    other = make_plan(opt67, h100, Workload(batch=8, prompt_len=512, gen_len=5), splits=200, chunks=2,
                      weights_gpu_layers=32)
    write_document(tmp_path / "plan.json", plan)
    write_document(tmp_path / "other.json", other)
    write_document(tmp_path / "measured.json", noisy_measurement(plan, h100_truth(h100), 0))
    return tmp_path


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_calibrates_with_the_plan_given(files, capsys):
    out = files / "fitted.json"
    code, printed, _ = run_cli(["calibrate", str(files / "measured.json"), "--plan", str(files / "plan.json"),
                                "--hardware", "h100-pcie5", "-o", str(out)], capsys)
    assert code == 0
    profile = load_document(HardwareProfile, out)
    assert within(profile.h2d.bandwidth_Bps, 40e9)
    assert "h2d" in printed and "wrote" in printed


def test_cli_finds_the_plan_beside_the_trace_or_named_in_it(files, capsys):
    (files / "measured.plan.json").write_text((files / "plan.json").read_text())
    code, _, err = run_cli(["calibrate", str(files / "measured.json"), "--hardware", "h100-pcie5",
                            "-o", str(files / "a.json")], capsys)
    assert code == 0, err
    (files / "measured.plan.json").unlink()
    trace = load_document(Trace, files / "measured.json")
    trace.extra["plan_path"] = "plan.json"  # relative to the trace's folder
    write_document(files / "named.json", trace)
    code, _, err = run_cli(["calibrate", str(files / "named.json"), "--hardware", "h100-pcie5",
                            "-o", str(files / "b.json")], capsys)
    assert code == 0, err


def bad(files, name, change):
    trace = load_document(Trace, files / "measured.json")
    trace = change(trace)
    write_document(files / name, trace)
    return str(files / name)


@pytest.mark.parametrize("case, message", [
    ("other plan", "recorded for plan"),
    ("other device", "device kind cuda"),
    ("empty", "no records"),
    ("unknown ids", "is not an operation of"),
    ("no plan", "which plan was executed"),
    ("no time", "nothing to fit"),
])
def test_bad_input_one_line_exit_2_nothing_written(files, capsys, case, message):
    plan = ["--plan", str(files / "plan.json")]
    if case == "other plan":
        args = [str(files / "measured.json"), "--plan", str(files / "other.json")]
    elif case == "other device":
        args = [bad(files, "cpu.json", lambda t: t.model_copy(update={"device": "cpu"}))] + plan
    elif case == "empty":
        args = [bad(files, "empty.json", lambda t: t.model_copy(update={"records": []}))] + plan
    elif case == "unknown ids":
        args = [bad(files, "ids.json", lambda t: t.model_copy(update={"records": [
            r.model_copy(update={"id": r.id.replace(".L3.", ".L99.")}) for r in t.records]}))] + plan
    elif case == "no time":
        args = [bad(files, "zero.json", lambda t: t.model_copy(update={"records": [
            r.model_copy(update={"end_s": r.start_s}) for r in t.records]}))] + plan
    else:
        args = [str(files / "measured.json")]
    out = files / "out.json"
    code, _, err = run_cli(["calibrate", *args, "--hardware", "h100-pcie5", "-o", str(out)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_execute_hook_calibrates_from_the_run_just_measured(files):
    plan = load_document(Plan, files / "plan.json")
    trace = load_document(Trace, files / "measured.json")
    result = calibrate_run(plan, trace, str(files / "after.json"), "measured.json")
    written = load_document(HardwareProfile, files / "after.json")
    assert written == result.profile
    assert result.error_after_pct < 2.0 < result.error_before_pct
    assert json.loads((files / "after.json").read_text())["provenance"]["calibrated_from"]


# --- the CPU loop: execute (the backend), calibrate, judge on a held-out workload ------------


@pytest.fixture
def one_thread():
    """CPU-mode timings on one intra-op thread: robust when another process takes a core."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cpu_loop_calibrating_on_one_workload_halves_the_error_on_another(tmp_path, capsys, one_thread):
    cpu, tiny = load_hardware("cpu-generic"), load_model("tiny-opt")
    wrong = cpu.model_copy(update=dict(  # copies and GEMMs 4× slower than the rough CPU figures
        name="cpu-wrong",
        h2d=cpu.h2d.model_copy(update={"bandwidth_Bps": cpu.h2d.bandwidth_Bps / 4}),
        d2h=cpu.d2h.model_copy(update={"bandwidth_Bps": cpu.d2h.bandwidth_Bps / 4}),
        gemm=scaled_curves(cpu, 0.25),
    ))
    a = make_plan(tiny, wrong, Workload(batch=4, prompt_len=32, gen_len=8), splits=16, chunks=2, weights_gpu_layers=1)
    b = make_plan(tiny, wrong, Workload(batch=8, prompt_len=48, gen_len=8), splits=30, chunks=1, weights_gpu_layers=1)
    for name, plan in (("a", a), ("b", b)):
        write_document(tmp_path / f"{name}.plan.json", plan)
    # workload A, calibrated right after the run (advisor execute --calibrate)
    assert main(["execute", str(tmp_path / "a.plan.json"), "-o", str(tmp_path / "a.json"), "--device", "cpu",
                 "--calibrate", str(tmp_path / "calibrated.json")]) == 0
    assert main(["execute", str(tmp_path / "b.plan.json"), "-o", str(tmp_path / "b.json"), "--device", "cpu"]) == 0
    calibrated = load_document(HardwareProfile, tmp_path / "calibrated.json")
    assert any("a.json" in used for used in calibrated.provenance.calibrated_from)
    write_document(tmp_path / "b-calibrated.plan.json", b.model_copy(update={"hardware": calibrated}))
    capsys.readouterr()

    def judged(plan_file):
        assert main(["compare", str(tmp_path / plan_file), str(tmp_path / "b.json"), "--json",
                     "--chrome", str(tmp_path / "chrome.json")]) == 0
        return json.loads(capsys.readouterr().out)

    before, after = judged("b.plan.json"), judged("b-calibrated.plan.json")
    assert after["overall"]["median_error_pct"] * 2 <= before["overall"]["median_error_pct"], (before, after)
    assert after["step_error"]["median_pct"] * 2 <= before["step_error"]["median_pct"], (before, after)


def test_gpu_calibration_bench_runs_in_its_cpu_mode(tmp_path, capsys, one_thread):
    from conftest import load_bench

    bench = load_bench("bench_calibration_gpu")
    assert bench.main(["--tiny", "--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "held-out decode step time" in printed and "target" in printed
    report = json.loads(next((tmp_path / "out").glob("calibration-cpu-tiny-*.json")).read_text())
    assert [(r["calibrated_on"], r["judged_on"]) for r in report["results"]] == [(4, 8), (8, 4)]
    for r in report["results"]:
        assert r["calibrated"]["median_pct"] < r["profile_only"]["median_pct"]
        assert r["calibrated"]["plans"] == 9 and len(r["calibrated"]["plan_errors_pct"]) == 9
        assert r["calibrated"]["steps"] == 9 * 4  # nine splits, four counted steps each
        assert 0 <= r["measurement_spread"]["median_pct"] <= r["measurement_spread"]["p95_pct"]
    assert list((tmp_path / "results").glob("calibration-cpu-tiny-*.txt"))
    assert (tmp_path / "out" / "profiled.json").exists()


def test_gpu_calibration_bench_errors_are_0_for_the_simulation_and_20pct_for_a_run_1_25x_slower():
    """The judging code against a closed form: a 'measured' trace that is the simulation itself
    has zero error per plan and per step, one 1.25× slower everywhere has 20% everywhere."""
    from conftest import load_bench

    from advisor.catalog import load_hardware, load_model
    from simulator import simulate_plan

    bench = load_bench("bench_calibration_gpu")
    hw = load_hardware("h100-pcie5")
    cfg = dict(bench.CONFIGS["tiny"])
    plans = bench.sweep(load_model("tiny-opt"), hw, 4, cfg)[:3]
    traces = [simulate_plan(p) for p in plans]
    errors = bench.errors_of(plans, traces, hw)
    assert len(errors["plan"]) == 3 and len(errors["step"]) > 0
    assert max(errors["plan"]) < 1e-9 and max(errors["step"]) < 1e-9
    assert bench.spread(traces) == pytest.approx(
        [abs(t - statistics.median(bench.counted(tr))) / statistics.median(bench.counted(tr)) * 100
         for tr in traces for t in bench.counted(tr)], abs=1e-9)

    # measured 1.25× slower than simulated, everywhere: every error is |1 − 1.25| / 1.25 = 20%
    def slower(trace, factor=1.25):
        records = [r.model_copy(update={"start_s": r.start_s * factor, "end_s": r.end_s * factor})
                   for r in trace.records]
        summary = trace.summary.model_copy(update={"step_times_s": [t * factor for t in trace.summary.step_times_s]})
        return trace.model_copy(update={"records": records, "summary": summary})

    errors = bench.errors_of(plans, [slower(t) for t in traces], hw)
    for kind in ("plan", "step", "op"):
        assert errors[kind] == pytest.approx([20.0] * len(errors[kind])), kind
    # the spread is relative: the same when every step is 1.25× longer
    assert bench.spread([slower(t) for t in traces]) == pytest.approx(bench.spread(traces), abs=1e-9)


def test_gpu_calibration_bench_spread_is_each_steps_distance_from_its_runs_median():
    from conftest import load_bench

    bench = load_bench("bench_calibration_gpu")

    class Summary:
        warmup_steps_excluded = 1
        step_times_s = [9.0, 1.0, 2.0, 4.0]  # the warm-up step (9) is left out; median of the rest is 2

    class Trace:
        summary = Summary()

    assert bench.spread([Trace()]) == pytest.approx([50.0, 0.0, 100.0])


def test_a_parameter_the_fit_leaves_on_its_limit_is_named(h100, opt67):
    """Traces whose attention ran 1000× faster than the profile's (nothing real does: think of
    operations too small to time) pull the rate past the 10× cap; the fit stops there and says so.
    The recoverable case above says nothing of the kind."""
    truth = h100.model_copy(update={"attention_Bps": h100.attention_Bps * 1000})
    capped = calibrate(h100, h100_runs(h100, opt67, truth))
    assert capped.profile.attention_Bps == pytest.approx(10 * max(h100.attention_Bps, h100.memory_bound_Bps))
    note = next(line for line in capped.lines if "stopped at the limit" in line)
    assert "attention rate" in note and "memory-bound" not in note
    recovered = calibrate(h100, h100_runs(h100, opt67, h100_truth(h100)))
    assert not any("stopped at the limit" in line for line in recovered.lines)
