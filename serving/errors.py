"""The one error a request's own content raises, wherever in the pipeline it is found."""
from __future__ import annotations


class RequestError(Exception):
    """A bad request: answered with ``status`` (4xx) and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


#: how much of a value a client sent an answer repeats: enough to recognise it, never a
#: 230 KB key name or a whole field
SHOWN_CHARS = 40


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A client's value as an answer may quote it: ``repr`` of at most ``limit`` characters,
    a longer one cut with ``...`` and its length."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"
