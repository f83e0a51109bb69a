"""The figures of the current plan: TTFT, decode step, throughput, PCIe bytes, memory, speedups.

They come from the scheduler's own prediction (`Plan.predicted`, the cost model), so they change
the instant the split does; `shown` keeps the values on screen for tests and the benchmark. A
value too long for the panel wraps under itself (never clipped); in a panel too narrow for the
label column, each value goes under its label.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text
from textual.message import Message
from textual.widget import Widget

from advisor.documents import Plan

def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:,.2f} ms"


def gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


LABEL_W = 18
MIN_VALUE_W = 16  # narrower than this, values go under their labels
_CONSOLE = Console(width=200, color_system=None, legacy_windows=False)  # only measures and wraps


def _wrap(value: Text, width: int) -> list[Text]:
    lines = [line for line in value.wrap(_CONSOLE, max(1, width), overflow="fold")] or [Text()]
    for line in lines:
        line.rstrip()
    return lines


class _Grid:
    """Label and value per row: plain Text (a rich Table costs several ms per repaint), laid out
    for a width by `lines`."""

    def __init__(self):
        self.rows: list[tuple[str, Text]] = []

    def add_row(self, label: str, value: str | Text) -> None:
        self.rows.append((label, value if isinstance(value, Text) else Text(value)))

    def lines(self, width: int) -> list[Text]:
        out: list[Text] = []
        value_w = width - LABEL_W
        for label, value in self.rows:
            if value_w >= MIN_VALUE_W:
                for i, part in enumerate(_wrap(value, value_w)):
                    line = Text(f"{label:<{LABEL_W}}" if i == 0 else " " * LABEL_W, style="bold" if i == 0 else "")
                    out.append(line.append_text(part))
            else:
                if label:
                    out.extend(_wrap(Text(label, style="bold"), width))
                out.extend(Text("  ").append_text(part) for part in _wrap(value, width - 2))
        return out


class Figures(Widget):
    """A two-column table of the current plan's predicted figures."""

    DEFAULT_CSS = """
    Figures { height: auto; }
    """

    class Reflowed(Message):
        """The figures now take another number of lines (a new plan, or a new width)."""

        def __init__(self, figures: Figures, height: int):
            super().__init__()
            self.figures, self.height = figures, height

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.shown: dict[str, object] = {}
        self.grid = _Grid()
        self.placeholder: Text | None = None
        self._laid_out: tuple[int, list[Text]] | None = None
        self.lines_used = 0

    # --- layout -------------------------------------------------------------------------------

    def lines(self, width: int) -> list[Text]:
        """The lines at `width` (cached for the last width asked)."""
        if self._laid_out is None or self._laid_out[0] != width:
            if self.placeholder is not None:
                lines = _wrap(self.placeholder, width)
            else:
                lines = self.grid.lines(width)
            self._laid_out = (width, lines)
        return self._laid_out[1]

    def render(self) -> Text:
        return Text("\n", no_wrap=True, overflow="crop").join(self.lines(self.content_size.width))

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self.lines(width))

    def on_resize(self) -> None:
        self._reflowed()

    def _reflowed(self) -> bool:
        """Post Reflowed when the number of lines changed; whether it did."""
        width = self.content_size.width
        used = len(self.lines(width)) if width else 0
        if used == self.lines_used:
            return False
        self.lines_used = used
        self.post_message(self.Reflowed(self, used))
        return True

    def _set(self, grid: _Grid, placeholder: Text | None = None) -> None:
        self.grid, self.placeholder, self._laid_out = grid, placeholder, None
        # a panel of fixed size needs no relayout of the screen unless its number of lines changed
        self.refresh(layout=self._reflowed())

    # --- content ------------------------------------------------------------------------------

    def show(self, plan: Plan | None, mode: str, optimum_split: int | None = None,
             requested: int | None = None) -> None:
        """`requested`: the split forced (when it is), said to have no effect if the plan uses another."""
        if plan is None or plan.predicted is None:
            self.shown = {}
            self._set(_Grid(), Text("no plan", style="dim"))
            return
        pred, wl, L = plan.predicted, plan.workload, plan.model.num_layers
        table = _Grid()
        first = plan.splits[0] if plan.splits else 0
        split_text = Text(f"{first} / {wl.prompt_len}", style="bold yellow")
        split_text.append(f"  {mode}", style="yellow")
        if requested is not None and requested != first:
            why = "nothing offloaded" if not plan.offload else f"the plan uses {first}"
            split_text.append(f" {requested}: no effect ({why})", style="yellow")
        table.add_row("split", split_text)
        if len(set(plan.splits)) > 1:
            table.add_row("", Text(f"re-planned per step: {plan.splits[0]} → {plan.splits[-1]}", style="yellow"))
        if optimum_split is not None and mode != "LP optimum":
            table.add_row("LP optimum", Text(f"{optimum_split} (press o)", style="green"))
        table.add_row("TTFT", ms(pred.ttft_s))
        table.add_row("decode step", Text(ms(pred.decode_step_s), style="bold"))
        table.add_row("throughput", f"{pred.decode_tokens_per_s:,.1f} tokens/s")
        table.add_row("PCIe / step", gb(pred.pcie_bytes_per_step))
        table.add_row("GPU memory", f"{gb(pred.gpu_memory_bytes)} of {gb(plan.hardware.gpu_memory_bytes)}")
        table.add_row("host memory", f"{gb(pred.host_memory_bytes)} of {gb(plan.hardware.host_memory_bytes)}, pinned")
        if pred.speedup_vs_full_transfer is not None:
            table.add_row("vs full transfer",
                          f"{pred.speedup_vs_full_transfer:.3f}× ({ms(pred.baseline_step_s)} at split 0)")
        else:
            why = "nothing offloaded" if not plan.offload else "no decode steps" if not wl.decode_steps else ""
            table.add_row("vs full transfer", Text(f"n/a: {why}" if why else "n/a", style="dim"))
        if pred.speedup_vs_resident is not None:
            table.add_row("vs resident KV",
                          f"{pred.speedup_vs_resident:.3f}× ({ms(pred.resident_step_s)} if resident)")
        else:
            table.add_row("vs resident KV", Text("does not fit on this GPU" if wl.decode_steps else "n/a: no decode steps",
                                                 style="dim"))
        kv = L if not plan.offload else plan.resident_kv_layers
        table.add_row("on the GPU", f"weights {plan.weights_gpu_layers}/{L} · KV {kv}/{L} layers")
        table.add_row("batching", f"{wl.gpu_batches} GPU batch{'es' if wl.gpu_batches > 1 else ''} of "
                                  f"{wl.gpu_batch_size} · {plan.chunks} chunk{'s' if plan.chunks > 1 else ''}")
        self.shown = {"split": first, "mode": mode, "decode_step_s": pred.decode_step_s,
                      "ttft_s": pred.ttft_s, "tokens_per_s": pred.decode_tokens_per_s,
                      "pcie_bytes_per_step": pred.pcie_bytes_per_step}
        self._set(table)
