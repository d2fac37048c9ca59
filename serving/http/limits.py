"""Refuse request bodies over a size limit before they are read (413, JSON message).

Starlette reads a whole multipart body before an endpoint runs, so the limit has to sit in
front of it: the declared ``Content-Length`` is checked first, and a body sent without one
(chunked) is counted as it streams in. When the count passes the limit, reading stops, and
whatever the app then answers (BentoML turns the interrupted read into a 500) is replaced by
the 413.

The limit depends on what the body is (``limit_for``). A JSON body is parsed whole before
any check, at about 45 bytes of memory per byte of numbers (61 MB of rows cost 2.7 GB), so
it gets only the room its rows can need: ``ZOO_MAX_IMAGES`` rows of the model's width, in
bytes and in values (separators counted as the body streams in, so a field the route
ignores cannot carry millions of numbers either). One image sent as the body stops at
``ZOO_MAX_IMAGE_BYTES``. Multipart uploads keep ``ZOO_MAX_REQUEST_BYTES``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from serving.http.asgi import App, Message, Receive, Scope, Send, header, send_json


#: JSON room per value of a row: a float as Python prints it ("-1.2345678901234567e-308, ")
#: with space to spare for a category's text
JSON_BYTES_PER_VALUE = 64
#: JSON room beyond the rows: the other fields (top_k, name, model, ...)
JSON_SLACK = 64 * 1024
#: JSON values beyond the rows' (or the images'), counted as separators while the body
#: streams in: each value costs a Python object when parsed, however short its text
VALUE_SLACK = 1024


@dataclass(frozen=True)
class Limit:
    """How many bytes a body may have, how many JSON values (None: not counted), and what
    sets them (named in the 413)."""

    max_bytes: int
    setting: str
    max_values: int | None = None


class BodyTooLarge(Exception):
    pass


def is_multipart(scope: Scope) -> bool:
    """A multipart form: BentoML parses every other body of a model route as JSON, whatever
    its declared type."""
    kind = header(scope, b"content-type").split(b";")[0].strip().lower()
    return kind == b"multipart/form-data"


def json_limit(kind: str | None, row_width: int, path: str, max_rows: int,
               max_request_bytes: int, name_bytes: int = 0) -> Limit:
    """A JSON body's limit: ``max_rows`` rows of ``row_width`` values for a tabular model
    (and ``name_bytes`` per row: its column names, for rows sent as records);
    for an image model, whose images come as JSON only to ``/v1/embeddings`` (one base64 data
    URL each), the request limit there and the room of a few fields elsewhere. Either way
    the values are counted too: 30 MB of numbers under a field nobody reads cost 1.3 GB."""
    request = Limit(max_request_bytes, "ZOO_MAX_REQUEST_BYTES")
    if kind == "tabular":
        rows = max_rows * (row_width * JSON_BYTES_PER_VALUE + name_bytes) + JSON_SLACK
        limit = Limit(rows, f"ZOO_MAX_IMAGES={max_rows} rows of {row_width} values",
                      max_rows * (row_width + 1) + VALUE_SLACK)
    elif kind == "image" and path == "/v1/embeddings":
        limit = Limit(max_request_bytes, f"ZOO_MAX_IMAGES={max_rows} images as data URLs",
                      max_rows + VALUE_SLACK)
    elif kind == "image":
        limit = Limit(JSON_SLACK, "JSON fields only: images go as files", VALUE_SLACK)
    else:  # the model is not loaded yet: the request limit alone
        return request
    if limit.max_bytes >= max_request_bytes:
        return Limit(max_request_bytes, request.setting, limit.max_values)
    return limit


def json_values(chunk: bytes) -> int:
    """About how many JSON values ``chunk`` starts: its separators and openings (a string's
    text may hold some too; base64 holds none)."""
    return chunk.count(b",") + chunk.count(b"[") + chunk.count(b"{")


class RequestSizeLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes``, or over what ``limit_for`` says
    for this request."""

    def __init__(self, app: App,
                 max_bytes: int, limit_for: Callable[[Scope], Limit] | None = None) -> None:
        self.app = app
        self.default = Limit(max_bytes, "ZOO_MAX_REQUEST_BYTES")
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope) if self.limit_for is not None else self.default
        declared = header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit.max_bytes:
            await self._refuse(send, int(declared), limit)
            return
        seen = values = 0
        started = cut = False
        over_values = False

        async def counting_receive() -> Message:
            nonlocal seen, values, cut, over_values
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen += len(chunk)
                if limit.max_values is not None:
                    values += json_values(chunk)
                    over_values = values > limit.max_values
                if seen > limit.max_bytes or over_values:
                    cut = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut and not started:  # the app's answer to a body cut off (its 500): dropped
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if cut and not started:
            await self._refuse(send, seen, limit, values if over_values else None)

    async def _refuse(self, send: Send, size: int, limit: Limit,
                      values: int | None = None) -> None:
        if values is not None:
            message = (f"request body of {values:,}+ JSON values is over the limit of "
                       f"{limit.max_values:,} ({limit.setting})")
        else:
            message = (f"request body of {size:,}+ bytes is over the limit of "
                       f"{limit.max_bytes:,} ({limit.setting})")
        await send_json(send, 413, {"error": message})
