"""Numeric inputs that leave the screen's letter and bracket keys alone.

Textual drops any binding whose key a focused Input could type (even a priority one). These
inputs take digits (and a decimal point where allowed) only, and say so, so `[`, `]`, `{`, `}`,
`o`, `s`, `e`, `m` and `q` reach the screen while one of them has focus.
"""

from __future__ import annotations

from textual.widgets import Input

INTEGER = r"\d*"
DECIMAL = r"\d*\.?\d*"


class NumberInput(Input):
    """A non-negative whole (or, with `decimal=True`, decimal) number; no signs, no exponents."""

    def __init__(self, value: str = "", *, decimal: bool = False, **kwargs):
        self.accepts = "0123456789." if decimal else "0123456789"
        super().__init__(value, restrict=DECIMAL if decimal else INTEGER, **kwargs)

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return character is not None and character in self.accepts
