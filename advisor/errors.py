"""Errors the user can act on.

Every part raises `UserError` for bad input (a malformed document, an unknown model, a plan that
cannot fit); the CLI prints its lines, one per problem, and exits with status 2 without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, described in one line per problem."""

    exit_code = 2

    def __init__(self, *lines: str):
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))
