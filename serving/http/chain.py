"""The chain a request passes, written in one place, and the one call that builds it.

Outermost first (a request goes down the list, its answer back up):

1. uvicorn: HTTP parsing (httptools) on the worker's event loop (uvloop), its protocol
   **replaced** by ``connections``: headers and bodies within time and size limits, and at
   most ``ZOO_MAX_CONNECTIONS`` per worker.
2. Starlette's ``ServerErrorMiddleware``: an exception nothing below caught becomes a 500.
3. BentoML's request metrics (``RunnerTrafficMetricsMiddleware``), **replaced** by
   ``route_metrics``: labelled by route template, never by the path a client sent.
4. BentoML's OpenTelemetry middleware (the model routes skip it unless ``ZOO_TRACE``).
5. BentoML's access log (only with ``ZOO_ACCESS_LOG``).
6. BentoML's ``TimeoutMiddleware`` (a 504 past ``traffic.timeout``), **patched** by
   ``latency``: its timer cancelled once the request has answered.
7. BentoML's ``MaxConcurrencyMiddleware`` (only where a maximum is configured).
8. Ours, added by :func:`install` in this order:
   a. ``AnsweringVersion`` (``version``): the request takes the worker's answering version
      once, for everything below, and its answer says which (``X-Zoo-Model-Version``);
   b. ``SafeAnswers`` (``rewrites``): every answer ``nosniff``, a redirect's ``Location`` a
      path only, every error one shape (OpenAI's under ``/v1/``), never the input echoed;
   c. ``RequestSizeLimit`` (``limits``): 413 past the body's limit, before it is read;
   d. ``RequireKeys`` (``keys``): 401/403 without the route's key, before the body is read;
   e. ``RawImageEmbed`` (``raw_body``): a raw-image ``POST /embed`` answered here.
9. BentoML's ``ContextMiddleware`` (the ``bentoml.Context`` of the request).
10. Starlette's ``ExceptionMiddleware`` and router:
    - BentoML's own routes: ``/livez``, ``/readyz``, ``/metrics``, ``/docs.json``,
      ``/schema.json``, ``/``;
    - each ``@bentoml.api`` route: BentoML reads the body by its media type (forms by
      ``multipart``'s reader, which **replaces** BentoML's; JSON by pydantic, whose refusal
      is a 400 that ``request_logs`` logs as one line without the body; a client that
      hangs up meanwhile, one debug line) and calls the method;
    - the mounted FastAPI app: ``/model``, ``/identities``, ``/gallery/...``,
      ``/v1/models``, ``/ui``.
11. The endpoint (``serving/service.py``): decode → face stage → model → gallery → answer.

Every private name patched in 1, 3, 6 and 10 is listed in ``bentoml_private``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from serving.http import (bentoml_private, connections, latency, multipart, request_logs,
                          route_metrics)
from serving.http.asgi import Scope
from serving.http.keys import Keys, RequireKeys
from serving.http.limits import Limit, RequestSizeLimit, is_multipart
from serving.http.raw_body import EmbedsBodies, RawImageEmbed, is_raw_image
from serving.http.rewrites import SafeAnswers
from serving.http.version import AnsweringVersion
from serving.settings import ServeSettings


class Running(EmbedsBodies, Protocol):
    """What the edge asks of the worker's service once it has started."""

    def json_limit(self, path: str) -> Limit: ...


def install(service: Any, settings: ServeSettings, keys: Keys,
            running: Callable[[], Running | None],
            templates: Callable[[], Iterable[str]]) -> None:
    """Build the chain above for ``service`` (a ``@bentoml.service`` class) in this process:
    BentoML's patches, then our middlewares. ``running`` is the worker's started service
    (None before it starts); ``templates``, read at the first request, the routes served."""
    bentoml_private.check_all()
    multipart.install(max_files=settings.max_images + 2,  # never fetch a text value as a URL
                      max_values=lambda path: None if (current := running()) is None
                      else current.json_limit(path).max_values)
    request_logs.install()  # a 400 for a bad body: one INFO line, never the body
    connections.install(settings)  # slow clients: timeouts, header size, connections
    latency.cancel_finished_request_timers()  # BentoML's per-request timers: the tail
    route_metrics.install(templates)  # bounded whatever paths are sent, and no names in it

    def body_limit(scope: Scope) -> Limit:
        """One image sent as the body, files in a multipart form, or JSON (rows)."""
        if is_raw_image(scope):
            return Limit(settings.max_image_bytes, "ZOO_MAX_IMAGE_BYTES: one image as the body")
        current = None if is_multipart(scope) else running()
        if current is None:
            return Limit(settings.max_request_bytes, "ZOO_MAX_REQUEST_BYTES")
        return current.json_limit(scope["path"])

    # the first added sees a request first (and its answer last)
    service.add_asgi_middleware(AnsweringVersion, service=running)
    service.add_asgi_middleware(SafeAnswers)
    service.add_asgi_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes,
                                limit_for=body_limit)
    service.add_asgi_middleware(RequireKeys, keys=keys)
    service.add_asgi_middleware(RawImageEmbed, service=running)
