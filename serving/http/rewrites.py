"""Every answer put right on its way out, by one middleware: what BentoML, FastAPI and
Starlette write that a hostile client could use, or that a client would have to parse three
ways.

- **Redirects keep only the path.** Starlette's trailing-slash redirect (``/embed/`` →
  ``/embed``) builds an absolute ``Location`` from the request's ``Host`` header, so whatever
  a client puts there comes back in the answer (cache poisoning behind a shared proxy).
- **Every answer says ``X-Content-Type-Options: nosniff``**, so no browser reads a JSON
  answer (which may quote a client's text) as HTML or script.
- **Every error has one shape**, ``{"error": "..."}``, and OpenAI's
  ``{"error": {"message": ..., "type": ...}}`` under ``/v1/`` (what the ``openai`` client
  parses): BentoML's 400 for a body that fails validation (``error`` and ``detail``), its
  4xx for a refused form (a list holding the error), FastAPI's ``{"detail": ...}`` and its 422
  (whose ``detail`` repeats the ``input`` sent: only where and what is kept), and the body
  limit's 413.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from serving.http.asgi import OPENAI_PREFIX, App, Message, Receive, Scope, Send, error_body

REDIRECTS = (301, 302, 303, 307, 308)
MAX_ERROR_BODY = 64 * 1024  # error answers are small; a bigger one passes unchanged
NOSNIFF = (b"x-content-type-options", b"nosniff")


class SafeAnswers:
    """ASGI middleware: the three rewrites above."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        held: Message | None = None
        parts: list[bytes] = []

        async def rewritten(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                message = _start(message)
                if message["status"] >= 400 and _is_json(message):
                    held = message  # sent with the body, once it is reshaped
                    return
            elif message["type"] == "http.response.body" and held is not None:
                parts.append(message.get("body", b""))
                if message.get("more_body") and sum(map(len, parts)) <= MAX_ERROR_BODY:
                    return
                start, original = held, b"".join(parts)
                held = None
                body = original if message.get("more_body") else _error_body(
                    path, original, start["status"])
                if body is not original:
                    start = {**start, "headers": [
                        (k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                        for k, v in start["headers"]]}
                await send(start)
                await send({"type": "http.response.body", "body": body,
                            "more_body": bool(message.get("more_body"))})
                return
            await send(message)

        await self.app(scope, receive, rewritten)


def _start(message: Message) -> Message:
    """The answer's start with ``nosniff``, and a redirect's ``Location`` as a path."""
    headers = list(message.get("headers", []))
    if message["status"] in REDIRECTS:
        headers = [(k, _path_only(v) if k.lower() == b"location" else v) for k, v in headers]
    if not any(k.lower() == NOSNIFF[0] for k, _ in headers):
        headers.append(NOSNIFF)
    return {**message, "headers": headers}


def _path_only(location: bytes) -> bytes:
    parts = urlsplit(location.decode("latin-1"))
    path = "/" + parts.path.lstrip("/")  # never "//host": a browser reads that as a host
    return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")


def _is_json(start: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json")
               for k, v in start.get("headers", []))


def _error_body(path: str, body: bytes, status: int) -> bytes:
    """An error answer in the one shape; one already in it (OpenAI's among them), or one
    that is no error object, unchanged."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, list) and len(data) == 1:  # BentoML's refused form: [{"error": ...}]
        data = data[0]
    if not isinstance(data, dict) or (message := _message(data)) is None:
        return body
    if set(data) == {"error"} and body.lstrip().startswith(b"{") \
            and not path.startswith(OPENAI_PREFIX):
        return body  # {"error": "..."} already
    return error_body(path, message, "invalid_request_error" if status < 500 else "server_error")


def _message(data: dict[str, Any]) -> str | None:
    """The error's text: ``error`` (BentoML's, ours), FastAPI's ``detail`` text, and the
    where and what of each validation error (never its ``input``)."""
    error, detail = data.get("error"), data.get("detail")
    if not isinstance(error, str) and not (error is None and detail is not None):
        return None
    if isinstance(detail, str):
        return detail if error is None else f"{error}: {detail}"
    if isinstance(detail, list) and detail:
        where = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', '')}"
                          for d in detail[:5] if isinstance(d, dict))
        return f"{error}: {where}" if error else where
    return error
