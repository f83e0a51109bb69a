"""The notice area: errors (a refused input, a plan that cannot fit, a bad file), warnings
(recomputation cannot pay, the split has no effect) and plain notes, one per line, never a crash."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

STYLES = {"error": "bold red", "warning": "yellow", "info": "", "ok": "green"}
ICONS = {"error": "✗ ", "warning": "! ", "info": "· ", "ok": "✓ "}


class Notice(Static):
    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.lines: list[tuple[str, str]] = []

    def show(self, lines: list[tuple[str, str]]) -> None:
        """(level, text) pairs; level is error, warning, info or ok."""
        if list(lines) == self.lines and self.lines:
            return
        relayout = [len(t) for _, t in lines] != [len(t) for _, t in self.lines]  # its height follows them
        self.lines = list(lines)
        text = Text()
        for i, (level, line) in enumerate(self.lines):
            if i:
                text.append("\n")
            text.append(ICONS.get(level, ""), STYLES.get(level, ""))
            text.append(line, STYLES.get(level, ""))
        self.set_class(any(level == "error" for level, _ in self.lines), "has-error")
        self.update(text, layout=relayout)

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)
