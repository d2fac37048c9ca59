"""What every middleware of the edge shares: ASGI's types, a request header, and the JSON
error answer (``{"error": ...}``, or OpenAI's shape under ``/v1/``), each written once."""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: routes in OpenAI's shape: their errors are too (what the ``openai`` client parses)
OPENAI_PREFIX = "/v1/"


def header(scope: Scope, name: bytes) -> bytes:
    """The value of a request's header ``name`` (lower case, as ASGI gives names); b"" when
    it has none."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return value
    return b""


def openai_error(message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(path: str, message: str, kind: str = "invalid_request_error",
               code: str | None = None) -> bytes:
    """``{"error": message}``, or OpenAI's error object under ``/v1/``."""
    if path.startswith(OPENAI_PREFIX):
        return json.dumps(openai_error(message, kind, code=code)).encode()
    return json.dumps({"error": message}).encode()


async def send_json(send: Send, status: int, payload: Any, headers: tuple = ()) -> None:
    """One whole JSON answer (numpy arrays written straight by orjson)."""
    await _send_body(send, status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                     headers)


async def send_error(send: Send, path: str, status: int, message: str,
                     kind: str = "invalid_request_error", code: str | None = None,
                     headers: tuple = ()) -> None:
    """:func:`error_body` as a whole answer."""
    await _send_body(send, status, error_body(path, message, kind, code), headers)


async def _send_body(send: Send, status: int, body: bytes, headers: tuple) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
