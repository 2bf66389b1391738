"""The one error type the stack raises: a short message meant for a person."""

from __future__ import annotations


class StackError(Exception):
    """A stack operation failed; ``str(err)`` is a one-line explanation, ``detail`` extra lines.

    The CLI prints the message (and the detail, e.g. a log tail) and exits non-zero,
    never a traceback.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail
