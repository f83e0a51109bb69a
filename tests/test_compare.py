"""`advisor compare`: predicted against measured, checked against hand-computed figures."""

import json

import pytest

from advisor.cli import main
from advisor.compare import compare_traces
from advisor.documents import Trace, Workload, write_document
from advisor.opgraph import build_graph
from advisor.plans import make_plan
from simulator import simulate_plan


@pytest.fixture
def plan(h100, opt67):
    return make_plan(opt67, h100, Workload(batch=8, prompt_len=512, gen_len=5), splits=300, chunks=2,
                     weights_gpu_layers=32)


def stretched(trace: Trace, kind: str, factor: float) -> Trace:
    """The trace with every `kind` operation lasting `factor` times as long, as a measurement."""
    records = [r.model_copy(update={"end_s": r.start_s + (r.end_s - r.start_s) * factor})
               if r.id.split(".")[3] == kind else r for r in trace.records]
    return trace.model_copy(update={"records": records, "source": "measured", "device": "cuda"})


def test_a_trace_against_itself_agrees_exactly(plan):
    predicted = simulate_plan(plan)
    c = compare_traces(plan, stretched(predicted, "none", 1.0), predicted)
    assert c.overall.median_error_pct == 0 and c.overall.p95_error_pct == 0
    assert c.operations == len(build_graph(plan).operations) and c.missing == 0
    assert all(g.ratio == pytest.approx(1.0) for g in c.by_kind)


def test_one_kind_half_again_as_slow_shows_in_its_row_only(plan):
    predicted = simulate_plan(plan)
    c = compare_traces(plan, stretched(predicted, "load_kv", 1.5), predicted)
    rows = {g.name: g for g in c.by_kind}
    # |p - 1.5 p| / 1.5 p = 1/3 for every load_kv, nothing elsewhere
    assert rows["load_kv"].ratio == pytest.approx(1.5)
    assert rows["load_kv"].median_error_pct == pytest.approx(100 / 3)
    assert rows["load_kv"].p95_error_pct == pytest.approx(100 / 3)
    assert all(g.median_error_pct == 0 for name, g in rows.items() if name != "load_kv")
    assert all(d["kind"] == "load_kv" for d in c.disagreements)
    loads = sum(1 for op in build_graph(plan).operations if op.kind == "load_kv")
    assert rows["load_kv"].count == loads


def test_step_times_and_lanes_are_those_of_each_trace(plan, h100):
    slower = h100.model_copy(update={"h2d": h100.h2d.model_copy(update={"bandwidth_Bps": 30e9})})
    measured = simulate_plan(plan.model_copy(update={"hardware": slower})).model_copy(
        update={"source": "measured", "device": "cuda"})
    predicted = simulate_plan(plan)
    c = compare_traces(plan, measured, predicted)
    for row, p, m in zip(c.step_times, predicted.summary.step_times_s, measured.summary.step_times_s):
        assert row["predicted_s"] == p and row["measured_s"] == m
        assert row["error_pct"] == pytest.approx(abs(p - m) / m * 100)
    assert c.lane_busy["h2d"] == {"predicted": predicted.summary.lane_busy["h2d"],
                                  "measured": measured.summary.lane_busy["h2d"]}
    assert c.step_error["median_pct"] > 10  # copies at 30 instead of 55 GB/s must show
    assert c.step_error["predicted_mean_s"] == pytest.approx(predicted.summary.decode_step_s)
    assert c.step_error["measured_mean_s"] == pytest.approx(measured.summary.decode_step_s)


def test_cli_prints_json_and_writes_both_timelines(tmp_path, plan, capsys):
    write_document(tmp_path / "plan.json", plan)
    write_document(tmp_path / "measured.json", stretched(simulate_plan(plan), "mlp", 1.2))
    chrome = tmp_path / "both.json"
    code = main(["compare", str(tmp_path / "plan.json"), str(tmp_path / "measured.json"), "--json",
                 "--chrome", str(chrome)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    mlp = next(g for g in data["by_kind"] if g["name"] == "mlp")
    assert mlp["ratio"] == pytest.approx(1.2)
    assert data["chrome_trace"] == str(chrome)
    events = json.loads(chrome.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert any(n.startswith("predicted") for n in names) and any(n.startswith("measured") for n in names)


def test_cli_text_names_kinds_layers_steps_and_disagreements(tmp_path, plan, capsys):
    write_document(tmp_path / "plan.json", plan)
    write_document(tmp_path / "measured.json", stretched(simulate_plan(plan), "attention", 2.0))
    assert main(["compare", str(tmp_path / "plan.json"), str(tmp_path / "measured.json")]) == 0
    printed = capsys.readouterr().out
    for words in ("by kind", "by layer", "by step", "decode step times", "lanes busy", "largest disagreements",
                  "attention", "median err", "p95 err"):
        assert words in printed
    assert (tmp_path / "measured.compare.chrome.json").exists()


@pytest.mark.parametrize("case, message", [
    ("other plan", "recorded for plan"),
    ("other device", "device kind cuda"),
    ("empty", "no records"),
])
def test_bad_input_one_line_exit_2(tmp_path, plan, capsys, case, message):
    other = plan.model_copy(update={"chunks": 1})
    write_document(tmp_path / "plan.json", plan if case != "other plan" else other)
    measured = stretched(simulate_plan(plan), "none", 1.0)
    if case == "other device":
        measured = measured.model_copy(update={"device": "cpu"})
    if case == "empty":
        measured = measured.model_copy(update={"records": []})
    write_document(tmp_path / "measured.json", measured)
    code = main(["compare", str(tmp_path / "plan.json"), str(tmp_path / "measured.json")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_step_figures_come_from_the_records_not_a_summary_they_do_not_support(tmp_path, plan, capsys):
    """A trace cut to its loads keeps a summary of the whole run; before, compare printed that
    summary's step errors as if measured. An edited summary is named and the records' figures used."""
    predicted = simulate_plan(plan)
    measured = stretched(predicted, "none", 1.0)
    write_document(tmp_path / "plan.json", plan)
    cut = measured.model_copy(update={"records": [r for r in measured.records if ".sample" not in r.id]})
    write_document(tmp_path / "cut.json", cut)
    assert main(["compare", str(tmp_path / "plan.json"), str(tmp_path / "cut.json")]) == 2
    err = capsys.readouterr().err
    assert "step boundaries" in err and len(err.strip().splitlines()) == 1
    edited = measured.model_copy(update={"summary": measured.summary.model_copy(
        update={"ttft_s": 1.0, "step_times_s": [1.0] * len(measured.summary.step_times_s)})})
    c = compare_traces(plan, edited, predicted)
    assert c.ttft["measured_s"] == predicted.summary.ttft_s
    assert [row["measured_s"] for row in c.step_times] == predicted.summary.step_times_s
    assert any("disagrees with its records" in note for note in c.notes)


def test_a_chrome_path_given_by_name_that_cannot_be_written_is_refused(tmp_path, plan, capsys):
    write_document(tmp_path / "plan.json", plan)
    write_document(tmp_path / "measured.json", stretched(simulate_plan(plan), "none", 1.0))
    code = main(["compare", str(tmp_path / "plan.json"), str(tmp_path / "measured.json"), "--chrome", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2 and "is a folder" in captured.err and captured.out == ""


def test_a_measured_trace_given_as_the_prediction_is_named(plan):
    measured = stretched(simulate_plan(plan), "none", 1.0)
    c = compare_traces(plan, measured, stretched(simulate_plan(plan), "mlp", 1.1))
    assert any("compares two runs" in note for note in c.notes)
    assert not any("compares two runs" in note for note in compare_traces(plan, measured, simulate_plan(plan)).notes)


def test_a_prediction_simulated_on_another_profile_is_named(plan, h100):
    """Plan fingerprints leave the hardware out (a calibrated profile plans the same operations),
    so a prediction simulated on another profile joins; the comparison must say whose it is."""
    other = h100.model_copy(update={"name": "h100-pcie5-calibrated"})
    measured = stretched(simulate_plan(plan), "none", 1.0)
    c = compare_traces(plan, measured, simulate_plan(plan.model_copy(update={"hardware": other})))
    assert any("simulated on h100-pcie5-calibrated, not on the plan's h100-pcie5" in n for n in c.notes)
    assert not any("simulated on" in n for n in compare_traces(plan, measured, simulate_plan(plan)).notes)
