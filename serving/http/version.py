"""Every answer from one version, and saying which: the request takes the worker's answering
version as it arrives (``serving/lifecycle/answering.py``), everything it calls reads that
one, and its answer carries ``X-Zoo-Model-Version``. A switch between versions changes only
the requests that arrive after it."""
from __future__ import annotations

from typing import Any, Callable

from serving.http.asgi import App, Message, Receive, Scope, Send
from serving.lifecycle.answering import ANSWERING

HEADER = b"x-zoo-model-version"


class AnsweringVersion:
    """ASGI middleware: the request's version, held from its first byte to its last."""

    def __init__(self, app: App, service: Callable[[], Any]) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service() if scope["type"] == "http" else None
        if service is None:
            await self.app(scope, receive, send)
            return
        answering = service.current.enter()
        version = answering.version.encode("latin-1", "replace")

        async def send_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, version)]
            await send(message)

        token = ANSWERING.set(answering)
        try:
            await self.app(scope, receive, send_version)
        finally:
            ANSWERING.reset(token)
            answering.leave()
