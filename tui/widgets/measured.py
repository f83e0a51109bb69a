"""Predicted against measured, per lane: busy time per decode step on each lane, the decode step
and TTFT, with the relative error; shown once a measured trace is loaded (`m` or `--measured`)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui.explore import LaneRow


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:,.3f} ms"


class MeasuredView(Static):
    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.rows: list[LaneRow] = []
        self.note = ""

    def show(self, title: str, rows: list[LaneRow], note: str = "") -> None:
        self.rows, self.note = rows, note
        table = Table(title=title, title_justify="left", title_style="bold", box=None, padding=(0, 2))
        table.add_column("")
        table.add_column("predicted", justify="right")
        table.add_column("measured", justify="right")
        table.add_column("error", justify="right")
        for row in rows:
            err = row.error
            if err is None:
                err_text = Text("—", style="dim")
            else:
                style = "green" if abs(err) <= 0.1 else "yellow" if abs(err) <= 0.25 else "red"
                err_text = Text(f"{err * 100:+.1f}%", style=style)
            table.add_row(row.name, _ms(row.predicted_s), _ms(row.measured_s), err_text)
        if note:
            table.caption = note
            table.caption_justify = "left"
            table.caption_style = "yellow"
        self.update(table)

    def message(self, text: str, style: str = "dim") -> None:
        self.rows, self.note = [], ""
        self.update(Text(text, style=style))
