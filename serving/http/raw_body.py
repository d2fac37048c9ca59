"""``POST /embed`` with the image itself as the body: the light route for small images.

At 32 px most of a request's CPU went to HTTP handling, and a third of that to multipart
parsing and BentoML's input and output models (bench/serve_throughput.py). A client that
sends one image as the whole body (``Content-Type: image/png``, ``image/jpeg``, ... or
``application/octet-stream``) is answered here, an ASGI middleware in front of BentoML's
route, with the same decoding, limits, batching and answer as the multipart ``/embed``:

    curl --data-binary @a.png -H 'Content-Type: image/png' localhost:3000/embed

Keys and the body-size limit still apply (their middlewares sit outside this one); any
other request to ``/embed`` (multipart, JSON rows) goes on to BentoML unchanged.

The service answers it (``ZooService.embed_body``), and the answer is written by orjson
straight from the float32 array, each number the shortest text that reads back as the same
float32: 5 us for a 128-d embedding against 170 us for ``json.dumps`` of ``tolist()``, and
half the bytes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from serving.errors import RequestError
from serving.http.asgi import App, Receive, Scope, Send, header, send_json

log = logging.getLogger(__name__)

ROUTE = "/embed"
_RAW_TYPES = (b"image/", b"application/octet-stream")


class EmbedsBodies(Protocol):
    """What answers a raw body: the worker's service."""

    async def embed_body(self, data: bytes) -> dict[str, Any]: ...


def is_raw_image(scope: Scope) -> bool:
    """A ``POST /embed`` whose body is one image file."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != ROUTE:
        return False
    return header(scope, b"content-type").strip().lower().startswith(_RAW_TYPES)


class RawImageEmbed:
    """ASGI middleware: answers raw-image ``POST /embed`` with the worker's service."""

    def __init__(self, app: App, service: Callable[[], EmbedsBodies | None]) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service() if is_raw_image(scope) else None
        if service is None:  # not ours, or the worker's service is not up yet
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            answer = await service.embed_body(body)
        except RequestError as exc:
            log.info("embed (raw image): %d %s", exc.status, exc)
            await send_json(send, exc.status, {"error": str(exc)})
            return
        await send_json(send, 200, answer)


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)
