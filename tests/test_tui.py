"""`advisor tui` driven with Textual's Pilot from the screen's default focus: the split keys move the
split and the figures follow, `o` lands where `advisor plan` does, `e` exports what `advisor plan`
writes, a GQA model and a plan that cannot fit are explained, bad files are refused cleanly, and a
measured trace is set against the prediction per lane."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from advisor.cli import main
from advisor.documents import Plan, Trace, TraceRecord, load_document, write_document
from textual.widgets import Input, Select
from tui.app import AdvisorApp, MeasuredScreen
from tui.explore import Inputs
from tui.widgets.chart import ChartData

SIZE = (150, 45)
DEFAULT_ARGS = ["--model", "opt-6.7b-8k", "--hardware", "h100-pcie5", "--batch", "32", "--prompt-len", "4096",
                "--gen-len", "128"]


def run(coro):
    return asyncio.run(coro)


def without_provenance(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    data.pop("provenance")
    return data


def advisor_plan(tmp_path: Path, *extra: str, name: str = "cli-plan.json") -> Path:
    out = tmp_path / name
    assert main(["plan", *DEFAULT_ARGS, *extra, "-o", str(out)]) == 0
    return out


def shown(app) -> dict:
    return app.main.query_one("#figures").shown


def test_split_keys_work_from_the_default_focus_and_change_the_figures(tmp_path):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            assert app.focused is app.main.query_one("#chart")
            start = dict(shown(app))
            assert start["mode"] == "LP optimum" and start["split"] == 4096
            await pilot.press("left_square_bracket")
            assert shown(app)["split"] == 4095
            assert shown(app)["decode_step_s"] != start["decode_step_s"]
            await pilot.press("left_curly_bracket")
            assert shown(app)["split"] == 4095 - 410
            slower = shown(app)["decode_step_s"]
            await pilot.press("right_curly_bracket", "right_square_bracket")
            assert shown(app)["split"] == 4096
            assert shown(app)["decode_step_s"] < slower
            assert shown(app)["mode"] == "forced"
            await pilot.press("right_square_bracket")  # clamped to the prompt
            assert shown(app)["split"] == 4096
            # a numeric input with focus does not swallow the split keys, and still takes digits
            batch = app.main.query_one("#in-batch", Input)
            batch.focus()
            await pilot.press("left_square_bracket")
            assert shown(app)["split"] == 4095 and batch.value == "32"
            await pilot.press("end", "backspace", "6")
            assert batch.value == "36"
            await app.settled()
            assert app.main.query_one("#in-split", Input).value == "4095"
            assert app.main.inputs.batch == 36  # the digits reached the workload, not just the field

    run(scenario())


def test_o_lands_on_the_split_advisor_plan_chooses_and_e_exports_its_plan(tmp_path):
    cli = advisor_plan(tmp_path)
    expected = load_document(Plan, cli)
    export = tmp_path / "plan.json"

    async def scenario():
        app = AdvisorApp(export_path=str(export))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            await pilot.press("left_curly_bracket", "left_curly_bracket")
            assert shown(app)["split"] != expected.splits[0]
            await pilot.press("o")
            assert shown(app)["split"] == expected.splits[0]
            assert app.main.current.splits == expected.splits
            await pilot.press("e")
            assert str(export.resolve()) in app.main.query_one("#notice").text
            assert str(export) in str(app.main.query_one("#status").render())

    run(scenario())
    assert without_provenance(export) == without_provenance(cli)


def test_exported_forced_split_equals_advisor_plan_split_and_simulates(tmp_path, capsys):
    export = tmp_path / "plan.json"

    async def scenario():
        app = AdvisorApp(export_path=str(export))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            await pilot.press("left_curly_bracket", "left_square_bracket", "e")
            return shown(app)["split"]

    split = run(scenario())
    assert split == 4096 - 410 - 1
    cli = advisor_plan(tmp_path, "--split", str(split))
    assert without_provenance(export) == without_provenance(cli)
    assert main(["simulate", str(export)]) == 0
    assert "decode step" in capsys.readouterr().out


def test_schedule_key_toggles_row_and_column(tmp_path):
    cli = advisor_plan(tmp_path, "--schedule", "column")

    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            row = dict(shown(app))
            await pilot.press("s")
            await app.settled()
            assert app.main.query_one("#in-schedule", Select).value == "column"
            assert app.main.current.schedule == "column"
            assert app.main.current.splits == load_document(Plan, cli).splits
            # the column plan's own figure (with every weight on the GPU it can equal the row one's)
            assert shown(app)["decode_step_s"] == load_document(Plan, cli).predicted.decode_step_s
            await pilot.press("s")
            await app.settled()
            assert app.main.current.schedule == "row"
            assert shown(app)["decode_step_s"] == row["decode_step_s"]

    run(scenario())


def test_gqa_model_says_recomputation_cannot_pay(tmp_path):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            app.main.query_one("#in-model", Select).value = "llama-3-8b"
            await pilot.pause()
            await app.settled()
            notice = app.main.query_one("#notice").text
            assert "recomputation cannot pay" in notice and "llama-3-8b" in notice
            assert app.main.current.splits[0] == 0

    run(scenario())


def test_a_plan_that_cannot_fit_is_explained_not_a_crash(tmp_path):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            batch = app.main.query_one("#in-batch", Input)
            batch.value = "4096"
            app.main.query_one("#in-weights", Input).value = "1"
            await pilot.pause()  # the inputs' change messages are handled: the debounce is pending
            await app.settled()
            assert "cannot fit" in app.main.query_one("#notice").text
            assert shown(app) == {}
            notice = app.main.query_one("#notice")
            assert "fits, all else equal)" in notice.text  # the whole reason is shown, to its last words
            await pilot.pause()  # its layout follows the new text
            width = notice.content_region.width
            assert notice.get_content_height(notice.size, app.size, width) <= notice.content_region.height
            await pilot.press("left_square_bracket", "e")  # still alive, and says why nothing is exported
            assert "nothing to export" in app.main.query_one("#notice").text
            assert not (tmp_path / "plan.json").exists()
            batch.value = "0"
            await pilot.pause()
            await app.settled()
            assert "batch: 0 must be positive" in app.main.query_one("#notice").text

    run(scenario())


def test_bad_plan_file_is_one_clear_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "splits": []}')
    assert main(["tui", "--plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "advisor tui:" in err and "bad.json" in err and "Traceback" not in err
    assert main(["tui", "--plan", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    measured = tmp_path / "measured.json"
    measured.write_text("{}")
    assert main(["tui", "--measured", str(measured), "--export", str(measured)]) == 2  # before any screen
    assert "would destroy" in capsys.readouterr().err and measured.read_text() == "{}"

    async def scenario():  # constructed directly, the app shows it in the notice instead
        app = AdvisorApp(plan_path=str(bad), export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE):
            await app.settled()
            notice = app.main.query_one("#notice").text
            assert "--plan" in notice and "bad.json" in notice
            assert shown(app)["mode"] == "LP optimum"

    run(scenario())


def test_plan_flag_opens_that_plan(tmp_path):
    given = advisor_plan(tmp_path, "--split", "1234", "--weights-on-gpu", "1", name="given.json")
    export = tmp_path / "plan.json"

    async def scenario():
        app = AdvisorApp(plan=load_document(Plan, given), plan_path=str(given), export_path=str(export))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            assert shown(app)["split"] == 1234 and shown(app)["mode"] == "loaded plan"
            await pilot.press("e")
            await pilot.press("o")
            assert shown(app)["mode"] == "LP optimum"

    run(scenario())
    assert without_provenance(export) == without_provenance(given)


def test_a_loaded_plan_keeps_its_gpu_batches_chunks_and_placement_when_its_split_moves(tmp_path):
    """Its measured trace ran that configuration: `]` must re-plan it, not the scheduler's own pick
    (which dropped the 4 GPU batches and 2 chunks, and called the trace one of another plan)."""
    given = advisor_plan(tmp_path, "--gpu-batches", "4", "--chunks", "2", "--weights-on-gpu", "0.5",
                         "--split", "2000", name="given.json")
    loaded = load_document(Plan, given)

    async def scenario():
        app = AdvisorApp(plan=loaded, plan_path=str(given), export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            await pilot.press("right_square_bracket")
            await app.settled()
            current = app.main.current
            assert current.splits[0] == 2001
            assert (current.workload.gpu_batches, current.chunks, current.weights_gpu_layers) == \
                (4, 2, loaded.weights_gpu_layers)

    run(scenario())


def fake_measured(plan: Plan, path: Path, scale: float) -> Trace:
    """The simulated trace of `plan` with every time scaled, as if measured."""
    import simulator

    predicted = simulator.simulate_plan(plan)
    records = [TraceRecord(id=r.id, lane=r.lane, start_s=r.start_s * scale, end_s=r.end_s * scale)
               for r in predicted.records]
    summary = predicted.summary.model_copy(update={
        "ttft_s": predicted.summary.ttft_s * scale, "decode_step_s": predicted.summary.decode_step_s * scale,
        "step_times_s": [t * scale for t in predicted.summary.step_times_s]})
    trace = Trace(source="measured", plan_fingerprint=predicted.plan_fingerprint, device="test",
                  records=records, summary=summary)
    write_document(path, trace)
    return trace


def test_measured_trace_is_compared_per_lane_with_the_error(tmp_path):
    measured = tmp_path / "measured.json"
    bad = tmp_path / "bad-measured.json"
    bad.write_text("not json")

    async def scenario():
        app = AdvisorApp(inputs=Inputs(gen_len=4), export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            fake_measured(app.main.current, measured, 1.25)
            await pilot.press("m")
            assert isinstance(app.screen, MeasuredScreen)
            path = app.screen.query_one("#measured-path", Input)
            path.value = str(bad)
            await pilot.press("enter")
            assert isinstance(app.screen, MeasuredScreen)  # stays open with the error
            assert "not JSON" in str(app.screen.query_one("#measured-error").render())
            path.value = str(measured)
            await pilot.press("enter")
            assert not isinstance(app.screen, MeasuredScreen)
            await app.settled()
            rows = {row.name: row for row in app.main.query_one("#measured").rows}
            assert {"h2d busy / step", "gpu busy / step", "decode step", "TTFT"} <= set(rows)
            for row in rows.values():
                assert row.error == pytest.approx(1 / 1.25 - 1, abs=1e-6)
            assert app.main.query_one("#measured").note == ""
            await pilot.press("left_square_bracket")  # another plan: still compared, with a warning
            await app.settled()
            view = app.main.query_one("#measured")
            assert "measured for another plan" in view.note
            after = {row.name: row for row in view.rows}
            assert after["decode step"].measured_s == rows["decode step"].measured_s
            assert after["decode step"].predicted_s != rows["decode step"].predicted_s  # the new plan's

    run(scenario())


def test_command_palette_offers_the_same_actions(tmp_path):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE):
            await app.settled()
            commands = {c.title: c for c in app.get_system_commands(app.main)}
            for title in ("Split −1", "Split +1", "Split −10%", "Split +10%", "LP optimum", "Toggle schedule",
                          "Best batch", "Export plan", "Load measured trace"):
                assert title in commands
            commands["Split −10%"].callback()
            assert shown(app)["split"] == 4096 - 410
            commands["LP optimum"].callback()
            assert shown(app)["split"] == 4096

    run(scenario())


# --- snapshots -------------------------------------------------------------------------------


async def _settle(pilot):
    await pilot.app.settled()


def test_snapshot_main_screen_row_schedule(snap_compare, tmp_path):
    app = AdvisorApp(export_path="plan.json")
    assert snap_compare(app, terminal_size=SIZE, run_before=_settle)


def test_snapshot_main_screen_column_schedule(snap_compare, tmp_path):
    async def column(pilot):
        await pilot.app.settled()
        await pilot.press("s")
        await pilot.app.settled()

    app = AdvisorApp(export_path="plan.json")
    assert snap_compare(app, terminal_size=SIZE, run_before=column)


# a workload whose best batch (21) `bench/best_batch_check.py` checks against brute force
BEST_BATCH_INPUTS = Inputs(model="opt-2.7b", hardware="l4-pcie4", batch=8, prompt_len=2000, gen_len=8, schedule="row")


def test_b_sets_the_batch_with_the_most_tokens_per_second(tmp_path):
    """The same search as `advisor plan --batch best`, whose answer is brute-force tested."""
    from advisor.catalog import load_hardware, load_model
    from advisor.planner_cli import best_batch_plan, with_largest_batch
    from advisor.scheduler import Request

    request = Request(load_model("opt-2.7b"), load_hardware("l4-pcie4"), 8, 2000, 8, schedule="row")
    expected = best_batch_plan(with_largest_batch(request, "test", lambda line: None), lambda line: None)

    async def scenario():
        app = AdvisorApp(inputs=BEST_BATCH_INPUTS, export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            await pilot.press("b")
            await app.settled()
            await pilot.pause()
            await app.settled()
            assert app.main.query_one("#in-batch", Input).value == str(expected.workload.batch)
            assert app.main.inputs.batch == expected.workload.batch
            assert f"best batch: {expected.workload.batch} (" in app.main.query_one("#notice").text
            assert shown(app)["decode_step_s"] == pytest.approx(expected.predicted.decode_step_s)

    run(scenario())


def test_a_best_batch_search_overtaken_by_new_inputs_sets_nothing(tmp_path, monkeypatch):
    import threading

    import tui.app as tui_app

    release = threading.Event()
    real = tui_app.best_batch_plan

    def held(request, report, stop):  # the search finishes only after the test has typed
        release.wait(10)
        return real(request, report, stop)

    monkeypatch.setattr(tui_app, "best_batch_plan", held)

    async def scenario():
        app = AdvisorApp(inputs=BEST_BATCH_INPUTS, export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            await pilot.press("b")
            app.main.query_one("#in-prompt", Input).value = "1500"  # typed during the search
            release.set()
            await pilot.pause()
            await app.settled()
            await pilot.pause()
            assert app.main.query_one("#in-batch", Input).value == "8"
            assert "the inputs changed during the search" in app.main.query_one("#notice").text
            assert app.main.inputs.prompt_len == 1500

    run(scenario())


# --- layout at common terminal sizes ---------------------------------------------------------

VIEWS = ("#notice", "#figures", "#chart", "#timeline", "#status")


def screen_text(app) -> str:
    """The screen as the terminal would show it, one line per row."""
    return "\n".join("".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips())


async def reveal(pilot, widget):
    """Scroll `widget` into view as a user would reach it (wheel, page keys); its screen region."""
    widget.scroll_visible(animate=False, immediate=True)
    await pilot.pause()
    return widget.region


def assert_figures_whole(figures) -> None:
    """Every value on screen to its last character: wrapped under itself, never clipped or cut."""
    width, height = figures.content_region.width, figures.content_region.height
    lines = figures.lines(width)
    assert lines and all(line.cell_len <= width for line in lines)
    assert len(lines) <= height  # the panel is as tall as its lines
    shown = " ".join(" ".join(line.plain.split()) for line in lines)
    for label, value in figures.grid.rows:
        assert " ".join(f"{label} {value.plain}".split()) in shown


@pytest.mark.parametrize("size", [(80, 24), (60, 20), (100, 30), (120, 40), (150, 30)])
def test_every_panel_is_reachable_and_whole_at_common_terminal_sizes(tmp_path, size):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=size) as pilot:
            await app.settled()
            await pilot.pause()
            await app.settled()
            body = app.main.query_one("#body").region
            chart = app.main.query_one("#chart")
            assert app.focused is chart and body.contains_region(chart.region)  # the focus is in view
            for selector in VIEWS:
                widget = app.main.query_one(selector)
                region = await reveal(pilot, widget)
                least = 24 if selector == "#chart" else min(48, size[0] - 4)
                assert body.contains_region(region) and region.width >= least, selector
            assert_figures_whole(app.main.query_one("#figures"))
            await reveal(pilot, app.main.query_one("#figures"))
            text = " ".join(screen_text(app).split())
            rows = {label: value.plain for label, value in app.main.query_one("#figures").grid.rows}
            predicted = app.main.current.predicted
            assert rows["decode step"] == f"{predicted.decode_step_s * 1e3:.2f} ms"
            assert f"decode step {rows['decode step']}" in text and f"TTFT {rows['TTFT']}" in text
            await reveal(pilot, chart)
            assert "LP config" in chart.render().plain and "split" in chart.render().plain  # a chart, not a note
            assert chart.content_region.width >= 24
            timeline = app.main.query_one("#timeline")
            assert timeline.drawn_width == timeline.content_size.width  # its lanes fit, uncut
            # the inputs are reachable too, and a focused one is scrolled into view
            split = app.main.query_one("#in-split", Input)
            split.focus()
            await pilot.pause()
            await pilot.wait_for_scheduled_animations()
            assert body.contains_region(split.region)

    run(scenario())


def test_a_long_refusal_is_shown_whole_on_a_small_screen(tmp_path):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=(60, 20)) as pilot:
            await app.settled()
            app.main.query_one("#in-batch", Input).value = "4096"
            app.main.query_one("#in-weights", Input).value = "1"
            await pilot.pause()
            await app.settled()
            await pilot.pause()
            notice = app.main.query_one("#notice")
            assert "fits, all else equal)" in notice.text
            width = notice.content_region.width
            assert notice.get_content_height(notice.size, app.size, width) <= notice.content_region.height
            assert app.main.query_one("#body").region.contains_region(await reveal(pilot, notice))

    run(scenario())


def test_predicted_vs_measured_panel_is_reachable_whole_at_120x40(tmp_path):
    from tui.explore import Explorer

    inputs = Inputs(gen_len=4)
    measured = tmp_path / "measured.json"
    fake_measured(Explorer().plan(inputs, None), measured, 1.25)

    async def scenario():
        app = AdvisorApp(inputs=inputs, measured_path=str(measured), export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=(120, 40)) as pilot:
            await app.settled()
            view = app.main.query_one("#measured")
            assert len(view.rows) >= 4
            region = await reveal(pilot, view)
            assert app.main.query_one("#body").region.contains_region(region)
            assert region.height >= view.get_content_height(view.size, app.size, view.content_region.width)
            text = screen_text(app)
            assert all(row.name in text for row in view.rows)

    run(scenario())


def test_default_size_keeps_the_side_by_side_layout(tmp_path):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE):
            await app.settled()
            inputs, figures, chart = (app.main.query_one(s).region for s in ("#inputs", "#figures", "#chart"))
            assert inputs.width == 36 and figures.width == 58 and figures.x == inputs.right
            assert chart.x == figures.right and chart.y == figures.y and chart.height >= 25

    run(scenario())


# --- the chart -------------------------------------------------------------------------------


@pytest.mark.parametrize("top", [4096, 128, 100_000, 7])
def test_split_axis_labels_never_touch(top):
    from tui.widgets.chart import tick_labels

    expected = {str(round(top * i / 4)) for i in range(5)}
    for width in range(1, 160):
        line = "".join(tick_labels(top, width))
        assert len(line) == width
        labels = line.split()
        assert set(labels) <= expected, (width, line)  # no two run together
        if width >= len(str(top)) + 3:
            assert labels[0] == "0" and labels[-1] == str(top)


def test_chart_axis_at_a_narrow_plot_keeps_its_ends_and_drops_what_collides():
    from tui.widgets.chart import SplitChart

    chart = SplitChart()
    chart.data = ChartData(top=4096)
    for plot_w in range(8, 61):  # the plot's width in the panels of 80 to 150 columns, and more
        axis = chart._axis(plot_w)[1].plain.split()
        assert axis[0] == "split" and axis[1] == "0" and axis[-1] == "4096", plot_w
        assert all(label in {"0", "1024", "2048", "3072", "4096"} for label in axis[1:]), (plot_w, axis)


def test_chart_message_is_cleared_when_the_sweep_ends(tmp_path):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE):
            await app.settled()
            data = app.main.chart_data
            assert data.forced and "sweeping" not in data.message and not data.sweeping
            assert "sweeping" not in app.main.query_one("#chart").render().plain
            assert "best, split forced" in app.main.query_one("#chart").render().plain

    run(scenario())


# --- the split field agrees with the figures; simulated traces are not measured ones --------


def test_best_batch_in_forced_mode_leaves_field_and_figures_agreeing(tmp_path):
    async def scenario():
        app = AdvisorApp(export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            await pilot.press("left_square_bracket", "right_square_bracket")  # forced, at 4096
            assert shown(app)["mode"] == "forced" and shown(app)["split"] == 4096
            await pilot.press("b")
            for _ in range(3):
                await app.settled()
                await pilot.pause()
            assert app.main.inputs.batch == 26 and not app.main.current.offload  # nothing to split
            figures = app.main.query_one("#figures")
            field = app.main.query_one("#in-split", Input).value
            assert field == str(shown(app)["split"]) == "0"
            text = " ".join(line.plain for line in figures.lines(200))
            assert "forced 4096: no effect (nothing offloaded)" in text
            app.main.query_one("#in-batch", Input).value = "32"  # offloading again: the forced split is back
            await pilot.pause()
            await app.settled()
            assert shown(app)["split"] == 4096 and app.main.query_one("#in-split", Input).value == "4096"

    run(scenario())


def simulated_trace(path: Path, inputs: Inputs) -> Path:
    import simulator
    from tui.explore import Explorer

    trace = simulator.simulate_plan(Explorer().plan(inputs, None))
    assert trace.source == "simulated"
    write_document(path, trace)
    return path


def test_a_simulated_trace_is_refused_as_a_measured_one(tmp_path, capsys):
    inputs = Inputs(gen_len=4)
    simulated = simulated_trace(tmp_path / "trace.json", inputs)

    async def scenario():
        app = AdvisorApp(inputs=inputs, export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            await pilot.press("m")
            app.screen.query_one("#measured-path", Input).value = str(simulated)
            await pilot.press("enter")
            assert isinstance(app.screen, MeasuredScreen)  # stays open with the reason
            error = str(app.screen.query_one("#measured-error").render())
            assert "simulated trace" in error and "advisor execute" in error
            await pilot.press("escape")
            await app.settled()
            assert app.main.measured is None and not app.main.query_one("#measured").display

        app = AdvisorApp(inputs=inputs, measured_path=str(simulated), export_path=str(tmp_path / "plan.json"))
        async with app.run_test(size=SIZE):
            await app.settled()
            assert "--measured" in app.main.query_one("#notice").text
            assert "simulated trace" in app.main.query_one("#notice").text
            assert app.main.measured is None

    run(scenario())
    assert main(["tui", "--measured", str(simulated)]) == 2
    err = capsys.readouterr().err
    assert "simulated trace" in err and "Traceback" not in err


def test_export_never_writes_over_a_measured_trace_loaded_with_m(tmp_path):
    inputs = Inputs(gen_len=4)
    measured = simulated_trace(tmp_path / "measured.json", inputs)
    trace = load_document(Trace, measured)
    write_document(measured, trace.model_copy(update={"source": "measured", "device": "cuda"}))
    before = measured.read_text()

    async def scenario():
        app = AdvisorApp(inputs=inputs, export_path=str(measured))
        async with app.run_test(size=SIZE) as pilot:
            await app.settled()
            await pilot.press("m")
            app.screen.query_one("#measured-path", Input).value = str(measured)
            await pilot.press("enter")
            await app.settled()
            assert app.main.measured is not None
            await pilot.press("e")
            await app.settled()
            assert "would destroy" in app.main.query_one("#notice").text

    run(scenario())
    assert measured.read_text() == before
