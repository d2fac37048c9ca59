"""Two answers BentoML and Starlette write that a hostile client could use, put right.

- ``RelativeRedirects``: Starlette's trailing-slash redirect (``/embed/`` → ``/embed``) builds
  an absolute ``Location`` from the request's ``Host`` header, so whatever a client puts there
  comes back in the answer (cache poisoning behind a shared proxy). The path alone is enough.
- ``OpenAIErrors``: under ``/v1/`` every error is in OpenAI's shape, which the ``openai``
  client parses: BentoML's own 400 for a body that fails validation, and the 413 of the body
  limit, are ``{"error": "..."}`` and become ``{"error": {"message": ..., "type": ...}}``.
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from serving.http.asgi import OPENAI_PREFIX, App, Message, Receive, Scope, Send, error_body

REDIRECTS = (301, 302, 303, 307, 308)
MAX_ERROR_BODY = 64 * 1024  # error answers are small; a bigger one passes unchanged


class RelativeRedirects:
    """ASGI middleware: a redirect's ``Location`` keeps only its path and query."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def relative(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in REDIRECTS:
                message = {**message, "headers": [
                    (k, _path_only(v) if k.lower() == b"location" else v)
                    for k, v in message.get("headers", [])]}
            await send(message)

        await self.app(scope, receive, relative)


def _path_only(location: bytes) -> bytes:
    parts = urlsplit(location.decode("latin-1"))
    path = "/" + parts.path.lstrip("/")  # never "//host": a browser reads that as a host
    return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")


class OpenAIErrors:
    """ASGI middleware: error answers under ``/v1/`` in OpenAI's error shape."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(OPENAI_PREFIX):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        parts: list[bytes] = []

        async def reshaped(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if message["status"] >= 400 and _is_json(message):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                parts.append(message.get("body", b""))
                if message.get("more_body") and sum(map(len, parts)) <= MAX_ERROR_BODY:
                    return
                start, original = held, b"".join(parts)
                held = None
                body = original if message.get("more_body") else _openai_body(
                    path, original, start["status"])
                if body is not original:
                    start = {**start, "headers": [
                        (k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                        for k, v in start.get("headers", [])]}
                await send(start)
                await send({"type": "http.response.body", "body": body,
                            "more_body": bool(message.get("more_body"))})
                return
            await send(message)

        await self.app(scope, receive, reshaped)


def _is_json(start: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json")
               for k, v in start.get("headers", []))


def _openai_body(path: str, body: bytes, status: int) -> bytes:
    """``{"error": "text"}`` (and BentoML's ``detail``) as OpenAI's error; anything else, an
    OpenAI-shaped error already among them, unchanged."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return body
    message = data["error"]
    detail = data.get("detail")
    if isinstance(detail, list) and detail:  # BentoML's validation errors: where and what
        message += ": " + "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', '')}"
            for d in detail[:5] if isinstance(d, dict))
    kind = "invalid_request_error" if status < 500 else "server_error"
    return error_body(path, message, kind)
