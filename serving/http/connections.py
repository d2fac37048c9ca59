"""Connections that cannot hold a worker: headers and bodies read within time limits, headers
within a size limit, and a ceiling on connections per worker.

uvicorn (under BentoML) waits for a request's headers and body as long as a client keeps the
connection open, and takes a header line of any length: 3,000 connections sending partial
headers, and 3,000 sending bodies a byte at a time, were all still open after 15 s, and a
20 MB header line was read whole. None of this reaches an ASGI middleware, which sees a
request only once its headers are complete, so the guard sits in the protocol itself:

- ``ZOO_HEADER_TIMEOUT_S`` (10): the headers of a request must be complete this long after
  its first byte (or after the connection opens): else a 408 and the connection closed;
- ``ZOO_BODY_TIMEOUT_S`` (30): a body must bring 64 KiB (or its end) within this many
  seconds of its headers, and each 64 KiB more within as many again, while the server is
  ready to read it (about 2 KB/s at least): else the connection is closed and the request
  sees a disconnect. A client trickling a byte a second holds a worker's connection for
  30 s, not forever;
- ``ZOO_MAX_HEADER_BYTES`` (64 KiB): the request line and headers together: else a 431;
- ``ZOO_MAX_CONNECTIONS`` (1,024 per worker): uvicorn's own ``limit_concurrency``, which
  BentoML leaves unset: past it, new requests get a 503.

``install`` makes uvicorn's ``auto`` HTTP protocol this subclass of its httptools protocol
(the one ``auto`` picks when httptools is installed, as it is here); both names are listed in
``bentoml_private``.
"""
from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

from serving.http.asgi import error_body
from serving.http.bentoml_private import HTTP_PROTOCOLS, HTTPTOOLS_PROTOCOL
from serving.settings import ServeSettings

log = logging.getLogger(__name__)

HttpToolsProtocol = HTTPTOOLS_PROTOCOL.load()


class GuardedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's httptools protocol with the limits above (class attributes, set by
    ``install``)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int | None = None
    #: the progress a body must make in each ``body_timeout``
    body_progress_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.max_connections:
            self.limit_concurrency = self.max_connections
        self._reading_headers = True
        self._header_bytes = self._body_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    # -- the protocol's events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if (self._reading_headers and self._header_bytes > self.max_header_bytes
                and not self.transport.is_closing()):
            self._refuse(431, f"the request's headers are over {self.max_header_bytes:,} "
                              "bytes (ZOO_MAX_HEADER_BYTES)")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading_headers:  # the next request on a kept-alive connection
            self._reading_headers, self._header_bytes = True, 0
            self._arm(self.header_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._reading_headers, self._body_bytes = False, 0
        self._arm(self.body_timeout, self._body_stalled)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes >= self.body_progress_bytes:  # progress: a new window
            self._body_bytes = 0
            self._arm(self.body_timeout, self._body_stalled)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # -- timers ------------------------------------------------------------------------------

    def _arm(self, seconds: float, then: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self._reading_headers and not self.transport.is_closing():
            self._refuse(408, f"the request's headers took over {self.header_timeout:g} s "
                              "(ZOO_HEADER_TIMEOUT_S)")

    def _body_stalled(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        if self.flow.read_paused:  # the server is not reading yet: not the client's pause
            self._arm(self.body_timeout, self._body_stalled)
            return
        log.info("closed a connection whose request body brought less than %d bytes in %g s "
                 "(ZOO_BODY_TIMEOUT_S)", self.body_progress_bytes, self.body_timeout)
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``{"error": message}`` and close: the request never
        reaches the app."""
        self._disarm()
        body = error_body("", message)
        phrase = http.HTTPStatus(status).phrase
        self.transport.write(b"".join([
            f"HTTP/1.1 {status} {phrase}\r\n".encode(),
            b"content-type: application/json\r\nx-content-type-options: nosniff\r\n",
            f"content-length: {len(body)}\r\n".encode(),
            b"connection: close\r\n\r\n", body]))
        self.transport.close()


def install(settings: ServeSettings) -> None:
    """Make uvicorn's ``auto`` (and ``httptools``) protocol the guarded one, with the limits
    of ``settings``, for the workers this process starts."""
    GuardedHttpToolsProtocol.header_timeout = settings.header_timeout_s
    GuardedHttpToolsProtocol.body_timeout = settings.body_timeout_s
    GuardedHttpToolsProtocol.max_header_bytes = settings.max_header_bytes
    GuardedHttpToolsProtocol.max_connections = settings.max_connections
    protocols = HTTP_PROTOCOLS.load()
    path = f"{__name__}:{GuardedHttpToolsProtocol.__name__}"
    protocols["auto"] = protocols["httptools"] = path
