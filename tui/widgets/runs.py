"""Styled character cells into rich Text, one span per run of equal style.

The chart and the timeline both paint a grid cell by cell; appending each run of one style as a
single span keeps the Text small and rendering fast.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.style import Style
from rich.text import Text


def append_runs(text: Text, cells: Iterable[tuple[str, Style | None]]) -> Text:
    run: list[str] = []
    run_style = None
    for char, style in cells:
        if style is not run_style and run:
            text.append("".join(run), run_style)
            run = []
        run_style = style
        run.append(char)
    if run:
        text.append("".join(run), run_style)
    return text
