"""The figures of the current plan: TTFT, decode step, throughput, PCIe bytes, memory, speedups.

They come from the scheduler's own prediction (`Plan.predicted`, the cost model), so they change
the instant the split does; `shown` keeps the values on screen for tests and the benchmark.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from advisor.documents import Plan


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:,.2f} ms"


def gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


class _Grid:
    """Label and value per line: plain Text (a rich Table costs several ms per repaint)."""

    LABEL_W = 18

    def __init__(self):
        self.text = Text(no_wrap=True, overflow="ellipsis")

    def add_row(self, label: str, value: str | Text) -> None:
        if self.text:
            self.text.append("\n")
        self.text.append(f"{label:<{self.LABEL_W}}", style="bold")
        self.text.append_text(value if isinstance(value, Text) else Text(value))


class Figures(Static):
    """A two-column table of the current plan's predicted figures."""

    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.shown: dict[str, object] = {}

    def show(self, plan: Plan | None, mode: str, optimum_split: int | None = None) -> None:
        if plan is None or plan.predicted is None:
            self.shown = {}
            self.update(Text("no plan", style="dim"), layout=False)
            return
        pred, wl, L = plan.predicted, plan.workload, plan.model.num_layers
        table = _Grid()
        first = plan.splits[0] if plan.splits else 0
        split_text = Text(f"{first} / {wl.prompt_len}", style="bold yellow")
        split_text.append(f"  {mode}", style="yellow")
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
        self.update(table.text, layout=False)  # a fixed-size panel: no relayout of the screen
