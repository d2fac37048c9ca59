"""The one error a request's own content raises, wherever in the pipeline it is found."""
from __future__ import annotations


class RequestError(Exception):
    """A bad request: answered with ``status`` (4xx) and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
