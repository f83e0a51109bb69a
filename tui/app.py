"""`advisor tui`: explore plans interactively, export them, overlay measured runs.

The main screen holds the inputs (the choices `advisor plan` takes) and a split mode: the LP
optimum, a split forced by the user, or a plan loaded with `--plan`. A split key builds the
forced plan at once (the scheduler with `split=N`, cached) and updates the figures and the
chart's markers in the key handler; solving the optimum for new inputs, sweeping the split range
and simulating a short copy of the plan for the timeline run in thread workers, where newer input
cancels older work. The split keys are priority bindings of the main screen, so they work from
the default focus (the chart) and from the numeric inputs, which accept digits only; the modal
that asks for a measured trace is another screen and keeps every key for its own input.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Iterable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from advisor import shapes
from advisor.documents import DTYPE_BYTES, Plan, Trace, check_distinct, load_document, write_document
from advisor.errors import UserError
from advisor.plans import default_dtype
from advisor.planner_cli import best_batch_plan, with_largest_batch
from advisor.scheduler import predict, recompute_pays
from tui.explore import (
    Explorer, Inputs, compare_lanes, current_split, describe_model, gpu_waits, timeline_copy,
)
from tui.widgets.chart import ChartData, SplitChart
from tui.widgets.figures import Figures
from tui.widgets.inputs import NumberInput
from tui.widgets.measured import MeasuredView
from tui.widgets.notice import Notice
from tui.widgets.timeline import Timeline, render_timeline
from simulator.timeline import shown_batch

TIMELINE_LAYERS = 4
INPUT_DEBOUNCE_S = 0.25
SIM_DEBOUNCE_S = 0.05
AUTO = "auto"

SPLIT_KEYS = Binding.Group("split ±1", compact=True)
TENTH_KEYS = Binding.Group("±10%", compact=True)

MODES = {"optimum": "LP optimum", "forced": "forced", "loaded": "loaded plan"}


def not_measured(trace: Trace, where: str) -> str | None:
    """Why `trace` cannot stand for a measured run (a simulated one: `advisor simulate`'s), or None."""
    if trace.source == "measured":
        return None
    return (f"{where}: is a {trace.source} trace (source \"{trace.source}\", from `advisor simulate`), not a "
            f"measured one: give a trace from `advisor execute`")


class MeasuredScreen(ModalScreen[str | None]):
    """Asks for the path of a measured trace; stays open with the error when it cannot load."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, default: str, loader):
        super().__init__()
        self.default = default
        self.loader = loader

    def compose(self) -> ComposeResult:
        with Vertical(id="measured-dialog"):
            yield Label("Measured trace to overlay (a Trace document from `advisor execute`):")
            yield Input(value=self.default, placeholder="measured.json", id="measured-path")
            yield Static("", id="measured-error")
            with Horizontal(id="measured-buttons"):
                yield Button("Load", variant="primary", id="measured-load")
                yield Button("Cancel", id="measured-cancel")

    @on(Input.Submitted, "#measured-path")
    @on(Button.Pressed, "#measured-load")
    def load(self) -> None:
        path = self.query_one("#measured-path", Input).value.strip()
        error = self.loader(path) if path else "give a path"
        if error:
            self.query_one("#measured-error", Static).update(Text(error, style="bold red"))
        else:
            self.dismiss(path)

    @on(Button.Pressed, "#measured-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class Scroll(VerticalScroll):
    """A scrolling column that takes focus (for the arrow and page keys) only when it can scroll;
    the keys reach it from a focused child too (the chart, the default focus, binds none)."""

    def allow_focus(self) -> bool:
        return self.max_scroll_y > 0


def _row(label: str, widget) -> Horizontal:
    return Horizontal(Label(label, classes="input-label"), widget, classes="input-row")


class MainScreen(Screen):
    """Inputs on the left; notice, figures, chart, timeline and measured comparison on the right,
    scrolling when they do not fit; on a narrow screen, one scrolling column of them all."""

    AUTO_FOCUS = "#chart"
    # app.tcss lays the screen out by its width: "-wide" as designed (inputs 36 columns, figures
    # 58), "-medium" narrower panels, "-narrow" one scrolling column (the views, then the inputs),
    # "-tiny" the figures above the chart
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-tiny"), (76, "-narrow"), (120, "-medium"), (140, "-wide")]
    UPPER_MIN_HEIGHT = 17  # the figures and chart panel's least height (as #upper in app.tcss)
    BINDINGS = [
        # each pair is one item in the footer ("[]" split ±1), so that more of them fit a narrow one
        Binding("left_square_bracket", "move(-1)", "split −1", key_display="[", priority=True, group=SPLIT_KEYS),
        Binding("right_square_bracket", "move(1)", "split +1", key_display="]", priority=True, group=SPLIT_KEYS),
        Binding("left_curly_bracket", "move_tenth(-1)", "−10%", key_display="{", priority=True, group=TENTH_KEYS),
        Binding("right_curly_bracket", "move_tenth(1)", "+10%", key_display="}", priority=True, group=TENTH_KEYS),
        Binding("o", "optimum", "LP optimum", priority=True),
        Binding("s", "toggle_schedule", "row/column", priority=True),
        Binding("b", "best_batch", "best batch", priority=True),
        Binding("e", "export", "export", priority=True),
        Binding("m", "measured", "measured", priority=True),
        Binding("q", "app.quit", "quit", priority=True),
    ]

    def __init__(self, inputs: Inputs, explorer: Explorer, export_path: str,
                 loaded: Plan | None = None, loaded_label: str = "", measured: Trace | None = None,
                 measured_path: str = "", startup_errors: list[str] | None = None):
        super().__init__()
        self.explorer = explorer
        self.inputs = inputs
        self.export_path = export_path
        self.loaded = loaded
        self.loaded_label = loaded_label
        self.measured = measured
        self.measured_path = measured_path
        self.mode = "loaded" if loaded is not None else "optimum"
        self.split = current_split(loaded) if loaded is not None else 0
        self.optimum: Plan | None = None
        self.optimum_error: str | None = None
        self.current: Plan | None = loaded
        self.current_error: str | None = None
        self.input_error: str | None = None
        self.action_note: tuple[str, str] | None = None
        self.startup_errors = list(startup_errors or [])
        self.chart_data = ChartData(message="solving…")
        self.full_traces: dict[str, Trace] = {}
        self._gen = 0
        self._debounce = None
        self._solving = False
        self._revealed = False

    # --- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        inp = self.inputs
        models = self.explorer.model_names() + sorted(self.explorer.extra_models)
        hardware = self.explorer.hardware_names() + sorted(self.explorer.extra_hardware)

        def opt(value) -> str:
            return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

        yield Header(show_clock=False, icon="≋")
        # the views come first: below the narrow breakpoint they stack above the inputs in one
        # scrolling column; above it the inputs are docked on the left (app.tcss)
        with Scroll(id="body"):
            with Scroll(id="main"):
                yield Notice(id="notice")
                with Horizontal(id="upper"):
                    yield Figures(id="figures")
                    yield SplitChart(id="chart")
                yield Timeline(id="timeline")
                yield MeasuredView(id="measured")
                yield Static("", id="status")
            with VerticalScroll(id="inputs"):
                yield Label("Workload", classes="section")
                yield _row("model", Select([(m, m) for m in models], value=inp.model, allow_blank=False,
                                           type_to_search=False, compact=True, id="in-model"))
                yield _row("hardware", Select([(h, h) for h in hardware], value=inp.hardware,
                                              allow_blank=False, type_to_search=False, compact=True,
                                              id="in-hardware"))
                yield _row("batch", NumberInput(str(inp.batch), compact=True, id="in-batch"))
                yield _row("prompt", NumberInput(str(inp.prompt_len), compact=True, id="in-prompt"))
                yield _row("new tokens", NumberInput(str(inp.gen_len), compact=True, id="in-gen"))
                yield Label("Plan", classes="section")
                yield _row("schedule", Select([("row", "row"), ("column", "column")], value=inp.schedule,
                                              allow_blank=False, type_to_search=False, compact=True,
                                              id="in-schedule"))
                yield _row("objective", Select([(AUTO, AUTO), ("latency", "latency"), ("throughput", "throughput")],
                                               value=inp.objective or AUTO, allow_blank=False,
                                               type_to_search=False, compact=True, id="in-objective"))
                yield _row("GPU batches", NumberInput(opt(inp.gpu_batches), placeholder=AUTO,
                                                compact=True, id="in-gpu-batches"))
                yield _row("weights GPU", NumberInput(opt(inp.weights_on_gpu), placeholder="auto (0..1)",
                                                decimal=True, compact=True, id="in-weights"))
                yield _row("KV budget GB", NumberInput(opt(inp.gpu_kv_budget_gb), placeholder=AUTO, decimal=True,
                                                 compact=True, id="in-budget"))
                yield _row("split", NumberInput(str(self.split), compact=True, id="in-split"))
                yield Static(Text("[ ] split ±1   { } ±10%\n"
                                  "o LP optimum   s row/column\n"
                                  "b best batch   e export\n"
                                  "m measured   q quit\n"
                                  "ctrl+p: command palette", style="dim"), id="keys-help")
        yield Footer()

    def on_mount(self) -> None:
        self._update_title()
        self.query_one("#measured").display = self.measured is not None
        if self.loaded is not None:
            self._show_current()
        self._update_status()
        self.refresh_notice()
        self.solve()

    @on(Figures.Reflowed)
    def _figures_reflowed(self, event: Figures.Reflowed) -> None:
        """The panel beside the chart grows with the figures (wrapped on a narrow screen)."""
        upper = self.query_one("#upper")
        height = max(self.UPPER_MIN_HEIGHT, event.height + 2)  # and the border
        if upper.styles.min_height is None or upper.styles.min_height.value != height:
            upper.styles.min_height = height
        if not self._revealed and self.current is not None:
            # the default focus (the chart) was scrolled into view before the first figures took
            # their room: once more, now that they have
            self._revealed = True
            self.call_after_refresh(self._reveal_focus)

    def _reveal_focus(self) -> None:
        if self.focused is not None:
            self.focused.scroll_visible(animate=False, immediate=True)

    # --- reading the inputs -------------------------------------------------------------------

    def read_inputs(self) -> Inputs:
        """The inputs on screen; raises UserError naming the field when one is not valid."""
        def number(widget_id: str, name: str, kind, *, optional=False, positive=True, top=None):
            text = self.query_one(widget_id, Input).value.strip()
            if not text:
                if optional:
                    return None
                raise UserError(f"{name}: give a value")
            try:
                value = kind(text)
            except ValueError:
                raise UserError(f"{name}: {text!r} is not a number") from None
            if (positive and value <= 0) or value < 0:
                raise UserError(f"{name}: {value} must be {'positive' if positive else 'at least 0'}")
            if top is not None and value > top:
                raise UserError(f"{name}: {value} must lie in [0, {top}]")
            return value

        objective = self.query_one("#in-objective", Select).value
        return Inputs(
            model=str(self.query_one("#in-model", Select).value),
            hardware=str(self.query_one("#in-hardware", Select).value),
            batch=number("#in-batch", "batch", int),
            prompt_len=number("#in-prompt", "prompt", int),
            gen_len=number("#in-gen", "new tokens", int),
            schedule=str(self.query_one("#in-schedule", Select).value),
            objective=None if objective == AUTO else str(objective),
            gpu_batches=number("#in-gpu-batches", "GPU batches", int, optional=True),
            weights_on_gpu=number("#in-weights", "weights on GPU", float, optional=True, positive=False, top=1.0),
            gpu_kv_budget_gb=number("#in-budget", "KV budget", float, optional=True, positive=False),
            chunks=self.inputs.chunks, cost_model=self.inputs.cost_model, dtype=self.inputs.dtype,
        )

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("in-split", "measured-path"):
            return
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(INPUT_DEBOUNCE_S, self.inputs_changed)

    @on(Input.Submitted)
    def _input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "in-split":
            text = event.value.strip()
            if text.isdigit():
                self.set_split(int(text))
            self.query_one("#chart").focus()
            return
        self.inputs_changed()
        self.query_one("#chart").focus()

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        self.inputs_changed()

    def inputs_changed(self) -> None:
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        try:
            inputs = self.read_inputs()
            self.explorer.model(inputs.model)
            self.explorer.hw(inputs.hardware)
        except UserError as error:
            self.input_error = error.lines[0] if error.lines else str(error)
            self.refresh_notice()
            return
        self.input_error = None
        if inputs == self.inputs and (self.optimum is not None or self._solving or self.optimum_error):
            self.refresh_notice()
            return
        self.inputs = inputs
        if self.mode == "loaded":
            self.mode = "forced"
        self.split = min(self.split, inputs.prompt_len)
        self._update_title()
        self.solve()

    # --- solving ------------------------------------------------------------------------------

    def solve(self) -> None:
        """Solve the optimum (and the current plan) for the inputs, then sweep: in a worker."""
        self._gen += 1
        self.optimum = None
        self.optimum_error = None
        self._solving = True
        self.chart_data = ChartData(message="solving…", top=self.inputs.prompt_len)
        self.query_one(SplitChart).show(self.chart_data)
        self._solve_worker(self._gen, self.inputs, self.mode, self.split)

    def _post(self, callback, *args) -> None:
        """Run `callback` on the app's thread, unless the worker was cancelled or the app has closed."""
        if get_current_worker().is_cancelled:
            return
        try:
            self.app.call_from_thread(callback, *args)
        except RuntimeError:  # the app stopped while this worker ran (q pressed mid-simulation)
            pass

    @work(thread=True, exclusive=True, group="solve", exit_on_error=False)
    def _solve_worker(self, gen: int, inputs: Inputs, mode: str, split: int) -> None:
        worker = get_current_worker()
        try:
            optimum, optimum_error = self.explorer.plan(inputs, None), None
        except UserError as error:
            optimum, optimum_error = None, "; ".join(error.lines)
        current, current_error = None, None
        if mode == "forced":
            try:
                current = self.explorer.plan(inputs, split)
            except UserError as error:
                current_error = "; ".join(error.lines)
        if worker.is_cancelled:
            return
        self._post(self._apply_plans, gen, mode, split, optimum, optimum_error, current, current_error)
        if optimum is None or worker.is_cancelled:
            return
        curve = self.explorer.curve(optimum)
        if worker.is_cancelled:
            return
        self._post(self._apply_curve, gen, curve, None)
        if curve is None:
            return
        forced = self.explorer.forced_points(inputs, lambda: worker.is_cancelled)
        if not worker.is_cancelled:
            self._post(self._apply_curve, gen, curve, forced)

    def _apply_plans(self, gen, mode, split, optimum, optimum_error, current, current_error) -> None:
        if gen != self._gen:
            return
        self._solving = False
        self.optimum, self.optimum_error = optimum, optimum_error
        if self.mode == "optimum":
            self.current, self.current_error = optimum, optimum_error
        elif self.mode == "forced" and mode == "forced" and split == self.split:
            self.current, self.current_error = current, current_error
        elif self.mode == "forced":  # the split moved while the worker solved
            self._build_forced()
        self.chart_data.optimum_split = self._optimum_split()
        self.chart_data.message = ("no plan" if optimum is None
                                   else "no offloading needed: the whole KV cache fits on the GPU"
                                   if not optimum.offload
                                   else "no chart: the plan has no decode steps"
                                   if not optimum.workload.decode_steps else "sweeping…")
        self._show_current()

    def _apply_curve(self, gen, curve, forced) -> None:
        """The swept curve (forced None: the forced splits are still being solved), then the sweep's
        end (forced: the forced splits' points)."""
        if gen != self._gen:
            return
        self.chart_data.curve = curve
        self.chart_data.forced = forced
        self.chart_data.sweeping = curve is not None and forced is None
        if curve is not None or forced is not None:
            self.chart_data.message = ""
        self._refresh_chart()

    def _optimum_split(self) -> int | None:
        if self.optimum is None or not self.optimum.offload:
            return None
        return current_split(self.optimum)

    # --- the current plan ---------------------------------------------------------------------

    def _build_forced(self) -> None:
        try:
            self.current, self.current_error = self.explorer.plan(self.inputs, self.split), None
        except UserError as error:
            self.current, self.current_error = None, "; ".join(error.lines)

    def set_split(self, split: int) -> None:
        """Force `split` (clamped to [0, prompt]) and show its plan at once."""
        self.split = max(0, min(int(split), self.inputs.prompt_len))
        self.mode = "forced"
        self.action_note = None
        self._build_forced()
        self._show_current()

    def _base_split(self) -> int:
        if self.mode == "forced" or self.current is None:
            return self.split
        return current_split(self.current)

    def _show_current(self) -> None:
        """Figures, chart markers, split field and notice for the current plan; then simulate."""
        p = self.current
        figures = self.query_one(Figures)
        if p is None:
            figures.show(None, MODES[self.mode])
        else:
            figures.show(p, MODES[self.mode], self._optimum_split(),
                         requested=self.split if self.mode == "forced" else None)
            if self.mode != "forced":
                self.split = current_split(p)
        split_input = self.query_one("#in-split", Input)
        with self.prevent(Input.Changed):
            # the split the plan uses: a forced split has none when nothing is offloaded (the
            # figures say so), and the forced one is kept for the next inputs
            split_input.value = str(self.split if p is None else current_split(p))
        self.chart_data.current_split = self.split if p is None else current_split(p)
        self.chart_data.current_step_s = p.predicted.decode_step_s if p is not None and p.predicted else None
        self.chart_data.top = self.inputs.prompt_len
        self._refresh_chart()
        self.refresh_notice()
        self.simulate()

    def _refresh_chart(self) -> None:
        self.query_one(SplitChart).show(self.chart_data)

    # --- notices ------------------------------------------------------------------------------

    def _update_title(self) -> None:
        try:
            model = self.explorer.model(self.inputs.model)
            self.sub_title = f"{describe_model(model)} on {self.inputs.hardware}"
        except UserError:
            self.sub_title = self.inputs.model

    def _update_status(self) -> None:
        export = Path(self.export_path)
        text = Text()
        text.append("e", style="bold")
        text.append(f" exports to {export}   ")
        text.append("m", style="bold")
        measured = f" measured: {self.measured_path}" if self.measured is not None else " loads a measured trace (none yet)"
        text.append(measured)
        self.query_one("#status", Static).update(text)

    def refresh_notice(self) -> None:
        lines: list[tuple[str, str]] = [("error", e) for e in self.startup_errors]
        inp = self.inputs
        try:
            model = self.explorer.model(inp.model)
            p = DTYPE_BYTES[inp.dtype or default_dtype(model, self.explorer.hw(inp.hardware))]
            kv = model.num_layers * shapes.kv_bytes(model, inp.batch, inp.prompt_len + inp.gen_len - 1, p)
            lines.append(("info", f"{describe_model(model)}: batch {inp.batch}, prompt {inp.prompt_len}, "
                                  f"{inp.gen_len} new tokens; KV cache {kv / 1e9:,.1f} GB"))
        except UserError:
            model = None
        if self.input_error:
            lines.append(("error", self.input_error))
        if self.optimum_error:
            lines.append(("error", self.optimum_error))
        elif self.current_error:
            lines.append(("error", f"split {self.split}: {self.current_error}"))
        if model is not None and not recompute_pays(model):
            lines.append(("warning", f"recomputation cannot pay for {model.name} (GQA: {model.gqa_group} query "
                                     f"heads per KV head, an activation is as large as its KV or larger): "
                                     f"the LP chooses split 0"))
        p = self.current
        if self._solving and self.optimum is None and p is None:
            lines.append(("info", "solving…"))
        if p is not None:
            if self.mode == "loaded":
                lines.append(("info", f"showing {self.loaded_label} as loaded; move the split or press o to re-plan"))
            if self.optimum is not None and not self.optimum.offload:
                pass  # the plan's own note says so
            elif not p.offload and self.mode == "forced":
                L = p.model.num_layers
                lines.append(("warning", f"at split {self.split} the scheduler keeps the whole KV cache on the GPU "
                                         f"and streams weights ({p.weights_gpu_layers}/{L} layers resident): the "
                                         f"split has no effect; set weights GPU to 1 to compare splits"))
            for note in p.notes:
                if not note.startswith("recomputation cannot pay"):
                    lines.append(("info", note))
        if self.action_note:
            lines.append(self.action_note)
        self.query_one(Notice).show(lines)

    # --- actions ------------------------------------------------------------------------------

    def action_move(self, delta: int) -> None:
        self.set_split(self._base_split() + delta)

    def action_move_tenth(self, direction: int) -> None:
        self.set_split(self._base_split() + direction * self.inputs.split_step)

    def action_optimum(self) -> None:
        self.mode = "optimum"
        self.action_note = None
        if self.optimum is None and self.optimum_error is None:
            try:
                self.optimum = self.explorer.plan(self.inputs, None)
            except UserError as error:
                self.optimum_error = "; ".join(error.lines)
        self.current, self.current_error = self.optimum, self.optimum_error
        self.chart_data.optimum_split = self._optimum_split()
        self._show_current()

    def action_best_batch(self) -> None:
        """Search the batch with the most decode tokens/s (as `advisor plan --batch best`) in the
        background, then set the batch field to it. A second `b` or quitting cancels a search."""
        self.inputs_changed()  # what the fields hold now, not what they held before the last keystroke
        if self.input_error:
            self.action_note = ("error", f"best batch: fix the inputs first ({self.input_error})")
        else:
            self.action_note = ("info", "best batch: searching …")
            self._best_batch_worker(self.inputs)
        self.refresh_notice()

    @work(thread=True, exclusive=True, group="best", exit_on_error=False)
    def _best_batch_worker(self, inputs: Inputs) -> None:
        worker = get_current_worker()

        def report(line: str) -> None:
            self._post(self._best_batch_progress, line.strip())

        try:
            request = with_largest_batch(self.explorer.request(inputs, None), "best batch", report)
            best = best_batch_plan(request, report, stop=lambda: worker.is_cancelled)
        except UserError as error:
            self._post(self._best_batch_done, inputs, None, "; ".join(error.lines))
            return
        except Exception as error:  # a bug, but the notice must not stay on "searching"
            self._post(self._best_batch_done, inputs, None, f"{type(error).__name__}: {error}")
            return
        if best is not None:
            self._post(self._best_batch_done, inputs, best.workload.batch,
                       f"{best.predicted.decode_tokens_per_s:,.1f} tokens/s, of batches up to {request.batch}")

    def _best_batch_progress(self, line: str) -> None:
        self.action_note = ("info", f"best batch: searching … {line}")
        self.refresh_notice()

    def _best_batch_done(self, inputs: Inputs, batch: int | None, text: str) -> None:
        try:
            now = self.read_inputs()  # the fields, typed into or not yet read
        except UserError:
            now = None
        if now is None or replace(inputs, batch=0) != replace(now, batch=0):
            self.action_note = ("warning", "best batch: the inputs changed during the search; press b again")
        elif batch is None:
            self.action_note = ("error", f"best batch: {text}")
        else:
            self.query_one("#in-batch", Input).value = str(batch)  # re-solves, as typing it would
            self.action_note = ("ok", f"best batch: {batch} ({text}); the batch field is set to it")
        self.refresh_notice()

    def action_toggle_schedule(self) -> None:
        select = self.query_one("#in-schedule", Select)
        with self.prevent(Select.Changed):
            select.value = "column" if select.value == "row" else "row"
        self.inputs_changed()

    def action_export(self) -> None:
        if self.current is None:
            self.action_note = ("error", f"nothing to export: {self.current_error or 'no plan yet'}")
        else:
            try:
                # the measured trace may have been loaded with `m` since start-up
                check_distinct({"the measured trace": self.measured_path}, {"--export": self.export_path})
                write_document(self.export_path, self.current)
                self.action_note = ("ok", f"exported the plan (split {current_split(self.current)}, "
                                          f"{MODES[self.mode]}) to {Path(self.export_path).resolve()}")
            except UserError as error:
                self.action_note = ("error", "; ".join(error.lines))
            except OSError as error:
                self.action_note = ("error", f"{self.export_path}: cannot write: {error.strerror or error}")
        self.refresh_notice()

    def action_measured(self) -> None:
        def done(path: str | None) -> None:
            if path:
                self.action_note = ("ok", f"loaded measured trace {path}")
                self.refresh_notice()

        self.app.push_screen(MeasuredScreen(self.measured_path, self.load_measured), done)

    def load_measured(self, path: str) -> str | None:
        """Load a measured trace to overlay; the error as one line, or None."""
        try:
            trace = load_document(Trace, path)
        except UserError as error:
            return "; ".join(error.lines)
        refused = not_measured(trace, path)
        if refused:
            return refused
        self.measured, self.measured_path = trace, path
        self.query_one("#measured").display = True
        self.query_one(MeasuredView).message("simulating the plan to compare…")
        self._update_status()
        self.simulate()
        return None

    # --- simulation ---------------------------------------------------------------------------

    def simulate(self) -> None:
        plan = self.current
        if plan is None:
            self.query_one(Timeline).show("", "timeline: no plan")
            if self.measured is not None:
                self.query_one(MeasuredView).message("no current plan to compare with")
            return
        self._sim_worker(plan, self.measured, self.query_one(Timeline).content_size.width or 100)

    @on(Timeline.WidthChanged)
    def _timeline_width_changed(self) -> None:
        self.simulate()  # the lanes, drawn again for the new width (the worker debounces)

    @work(thread=True, exclusive=True, group="sim", exit_on_error=False)
    def _sim_worker(self, plan: Plan, measured: Trace | None, width: int) -> None:
        worker = get_current_worker()
        if worker.cancelled_event.wait(SIM_DEBOUNCE_S):
            return  # newer input came within the debounce
        try:
            import simulator

            short, step = timeline_copy(plan)
            if short.workload.decode_steps == 0:
                body, caption, waits = "", "timeline: the plan has no decode steps", ""
            else:
                trace = simulator.simulate_plan(short)
                L = plan.model.num_layers
                first = max(0, min(plan.resident_kv_layers - 1, L - TIMELINE_LAYERS)) if plan.offload else 0
                batch = shown_batch(plan)
                body, waits = render_timeline(trace, step, first, min(TIMELINE_LAYERS, L), width, batch)
                whole = gpu_waits(trace, step, batch)
                caption = f"simulated decode step {step} of a {short.workload.gen_len}-token copy of the plan"
                if batch is not None:
                    caption += f", GPU batch b{batch} (of {plan.workload.gpu_batches}, run one after another)"
                if whole is not None:
                    caption += (f": {whole[0] * 1e3:,.2f} ms, GPU idle {whole[1] * 1e3:,.2f} ms "
                                f"({whole[1] / whole[0] * 100 if whole[0] else 0:.0f}%)")
            error = False
        except Exception as exc:  # the timeline is an aid: never let it take the screen down
            body, caption, waits, error = f"{type(exc).__name__}: {exc}", "timeline: the simulator failed", "", True
        if worker.is_cancelled:
            return
        self._post(self.query_one(Timeline).show, body, caption, waits, error, width)
        if measured is None:
            return
        try:
            import simulator

            key = plan.fingerprint()
            if key not in self.full_traces:
                self.full_traces[key] = simulator.simulate_plan(plan)
            rows = compare_lanes(self.full_traces[key], measured)
            note = "" if measured.plan_fingerprint == key else (
                f"the trace was measured for another plan (fingerprint {measured.plan_fingerprint}, "
                f"the current plan's is {key}): predicted figures are the current plan's")
            title = f"predicted vs measured per decode step ({self.measured_path}, {measured.device})"
            if not worker.is_cancelled:
                self._post(self.query_one(MeasuredView).show, title, rows, note)
        except Exception as exc:
            if not worker.is_cancelled:
                self._post(self.query_one(MeasuredView).message,
                                          f"cannot compare: {type(exc).__name__}: {exc}", "red")


class AdvisorApp(App):
    """The advisor's explorer. `plan`/`measured` are loaded documents (or give their paths)."""

    CSS_PATH = "app.tcss"
    TITLE = "kvpr-advisor"

    def __init__(self, *, inputs: Inputs | None = None, plan: Plan | None = None, plan_path: str | None = None,
                 measured: Trace | None = None, measured_path: str | None = None,
                 export_path: str = "plan.json"):
        super().__init__()
        self.explorer = Explorer()
        errors = []
        if plan is None and plan_path:
            try:
                plan = load_document(Plan, plan_path)
            except UserError as error:
                errors += [f"--plan: {line}" for line in error.lines]
        if measured is None and measured_path:
            try:
                measured = load_document(Trace, measured_path)
            except UserError as error:
                errors += [f"--measured: {line}" for line in error.lines]
        refused = not_measured(measured, measured_path or "the trace") if measured is not None else None
        if refused:
            errors.append(f"--measured: {refused}")
            measured, measured_path = None, None
        if plan is not None and plan.predicted is None:  # a hand-made plan: figures from the cost model
            plan = plan.model_copy(update={"predicted": predict(plan)})
        if plan is not None:
            inputs = self.explorer.adopt(plan, Path(plan_path).name if plan_path else "loaded plan")
        self.main = MainScreen(inputs or Inputs(), self.explorer, export_path, loaded=plan,
                               loaded_label=plan_path or "the loaded plan", measured=measured,
                               measured_path=measured_path or "", startup_errors=errors)

    def get_default_screen(self) -> Screen:
        return self.main

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, MainScreen):
            yield SystemCommand("Split −1", "Recompute one token fewer per layer ([)", lambda: screen.action_move(-1))
            yield SystemCommand("Split +1", "Recompute one token more per layer (])", lambda: screen.action_move(1))
            yield SystemCommand("Split −10%", "Move the split down a tenth of the prompt ({)",
                                lambda: screen.action_move_tenth(-1))
            yield SystemCommand("Split +10%", "Move the split up a tenth of the prompt (})",
                                lambda: screen.action_move_tenth(1))
            yield SystemCommand("LP optimum", "Jump to the split the LP chooses (o)", screen.action_optimum)
            yield SystemCommand("Toggle schedule", "Switch between row and column schedules (s)",
                                screen.action_toggle_schedule)
            yield SystemCommand("Best batch", "Set the batch with the most decode tokens/s (b)",
                                screen.action_best_batch)
            yield SystemCommand("Export plan", f"Write the current plan to {screen.export_path} (e)",
                                screen.action_export)
            yield SystemCommand("Load measured trace", "Overlay a measured run (m)", screen.action_measured)

    async def settled(self, timeout: float = 30.0) -> None:
        """Wait until no worker or pending input is left (tests, benchmark, screenshots)."""
        import asyncio
        import time

        deadline = time.monotonic() + timeout
        # first, the screen is mounted (its first solve started) and has taken its default focus
        while time.monotonic() < deadline and (self.main._gen == 0 or self.main.focused is None):
            await asyncio.sleep(0.01)
        while time.monotonic() < deadline:
            busy = [w for w in self.workers if w.is_running] or self.main._debounce is not None
            if not busy:
                await asyncio.sleep(0.02)
                if not [w for w in self.workers if w.is_running] and self.main._debounce is None:
                    return
            await asyncio.sleep(0.02)
        raise TimeoutError("the TUI did not settle")


def cmd_tui(args) -> int:
    """Load `--plan` and `--measured` first: a bad file is one clear line and exit 2, no screen."""
    # exporting over --plan edits that plan in place; over --measured it would destroy a measurement
    check_distinct({"--measured": args.measured}, {"--export": args.export})
    plan = load_document(Plan, args.plan) if args.plan else None
    measured = load_document(Trace, args.measured) if args.measured else None
    refused = not_measured(measured, args.measured) if measured is not None else None
    if refused:
        raise UserError(refused)
    app = AdvisorApp(plan=plan, plan_path=args.plan, measured=measured, measured_path=args.measured,
                     export_path=args.export)
    app.run()
    return 0


if __name__ == "__main__":
    AdvisorApp().run()
