"""The GPU check (`bench/gpu_check.py`) in its tiny CPU mode, so the script cannot rot unseen."""

import json

from conftest import load_bench


def _gpu_check():
    return load_bench("gpu_check")


def test_the_gpu_check_runs_every_case_in_tiny_cpu_mode(tmp_path, capsys):
    assert _gpu_check().main(["--tiny", "--out", str(tmp_path), "--steps", "4"]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert (tmp_path / "gpu-check.txt").read_text().startswith("gpu_check ")
    assert [case["key"] for case in report["cases"]] == ["1", "2", "3", "4"]
    for case in report["cases"]:
        labels = [c["label"] for c in case["configs"]]
        assert labels[:2] == ["full transfer (l = 0)", "LP plan"] and len(labels) >= 4
        # every split computes the same greedy continuation from the one shared prefill
        assert case["tokens_agree"] is True
        assert all(c["step_ms"] > 0 for c in case["configs"])
        assert case["timing_overhead"]["reference_step_s"] > 0
    assert report["cases"][1]["lp"]["resident_kv_layers"] == 1
    assert set(report["cases"][2]["timing_overhead_also"]) == {"full transfer (l = 0)", "l = 1·s"}
    # case 3 keeps the first two steps' operations of its compared configs (where a run's head goes)
    heads = {c["label"]: c["head_ops"] for c in report["cases"][2]["configs"] if "head_ops" in c}
    assert set(heads) == {"full transfer (l = 0)", "LP plan", "l = 1·s"}
    for ops in heads.values():
        assert {op_id.split(".")[0] for op_id, *_ in ops} == {"s0", "s1"}
        assert all(0 <= start <= end for _, _, start, end in ops)
    assert all("head_ops" not in c for case in report["cases"][:2] for c in case["configs"])
    assert report["cases"][3]["lp"]["gpu_batches"] == 4
    assert "step_ms" in report["cases"][0]["resident"]
    assert report["checks"] and all(check["pass"] is None for check in report["checks"])  # not judged on a CPU
    assert "case 4" in capsys.readouterr().out


def test_step_breakdown_sums_each_steps_operations_by_kind_and_lane(tmp_path):
    """bench/step_breakdown.py against sums taken straight from a simulated trace's records."""
    from advisor.catalog import load_hardware, load_model
    from advisor.documents import Workload
    from advisor.plans import make_plan
    from simulator import simulate_plan

    module = load_bench("step_breakdown")
    plan = make_plan(load_model("tiny-opt"), load_hardware("h100-pcie5"), Workload(batch=2, prompt_len=32, gen_len=4),
                     splits=16, resident_kv_layers=0)
    trace = simulate_plan(plan)
    lines = module.breakdown(trace)
    assert len(lines) == 1 + plan.workload.decode_steps
    step1 = lines[2].split()
    assert int(step1[0]) == 1
    h2d = sum(r.end_s - r.start_s for r in trace.records if r.id.startswith("s1.") and r.lane == "h2d")
    assert float(step1[-3]) == round(h2d * 1e3, 1)
    assert float(step1[1]) == round(trace.summary.step_times_s[1] * 1e3, 1)


def test_head_summary_gives_each_lanes_busy_time_and_first_start_per_step():
    ops = [["s0.L0.b0.qkv", "gpu", 0.1, 0.5], ["s0.L1.b0.sample", "gpu", 0.5, 0.9],
           ["s1.L0.b0.load_kv", "h2d", 0.3, 1.2], ["s1.L0.b0.qkv", "gpu", 1.0, 1.1]]
    # step 1 is measured from step 0's sample end (0.9): its load started 0.6 ms before, prefetched
    assert _gpu_check().head_summary(ops) == ("step 0: gpu busy 0.80 from +0.10; "
                                              "step 1: h2d busy 0.90 from -0.60, gpu busy 0.10 from +0.10 (ms)")
