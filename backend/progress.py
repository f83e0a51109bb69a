"""Progress bars on stderr for the slow phases of a run (pinning memory, weights, prefill, decode).

Uses rich when it is installed (it is on the GPU machine); otherwise prints a line per tenth of a
phase. `quiet=True` shows nothing (tests, the GPU check's inner runs).
"""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._rich = None
        self._tasks: dict[str, int] = {}
        self._last: dict[str, int] = {}
        if not quiet:
            try:
                from rich.progress import (BarColumn, Progress as RichProgress, TaskProgressColumn,
                                           TextColumn, TimeElapsedColumn)
                from rich.console import Console

                self._rich = RichProgress(TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(),
                                          TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            except ImportError:
                self._rich = None

    def __enter__(self) -> "Progress":
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()

    def update(self, what: str, done: float, total: float) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            if what not in self._tasks:
                self._tasks[what] = self._rich.add_task(what, total=total)
            self._rich.update(self._tasks[what], completed=done, total=total)
            return
        tenth = int(10 * done / total) if total else 10
        if self._last.get(what) != tenth:
            self._last[what] = tenth
            print(f"{what}: {100 * done / total if total else 100:.0f}%", file=sys.stderr, flush=True)
