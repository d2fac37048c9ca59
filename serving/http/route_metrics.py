"""BentoML's request metrics labelled by route template, never by the path a client sent.

BentoML's traffic middleware labels every request with its raw path, 404s and 401s
included, and it sits in front of the keys check. Each new path is a new series in
``/metrics`` and in the Prometheus multiprocess files, kept until restart: 100 requests for
16 KB random paths took ``/metrics`` from 27 KB to 40 MB, and ``GET /identities/Alice Smith``
put an enrolled name on the open ``/metrics``.

Here the same middleware (the same metric names, buckets and labels, so dashboards keep
working) sees the route's template instead: ``/identities/{name}`` for every name, and
``unmatched`` for any path the service does not have. The route gets the real path.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from serving.http.asgi import App, Scope
from serving.http.bentoml_private import TRAFFIC_METRICS


UNMATCHED = "unmatched"
_REAL_PATH = "zoo.real_path"
#: what BentoML serves itself, beside the service's routes
BENTOML_ROUTES = ("/", "/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json",
                  "/schema.json", "/openapi.json", "/redoc")


class RouteLabels:
    """Maps a request path onto the template of the route that answers it, matched as
    Starlette's router matches it (``compile_path``)."""

    def __init__(self, templates: Iterable[str]) -> None:
        from starlette.routing import compile_path

        self.exact: set[str] = set()
        self.patterns: list[tuple[re.Pattern[str], str]] = []
        for template in dict.fromkeys(templates):
            regex, label, convertors = compile_path(template)
            if convertors:
                self.patterns.append((regex, label))
            else:
                self.exact.add(template)

    def __call__(self, path: str) -> str:
        if path in self.exact:
            return path
        for pattern, label in self.patterns:
            if pattern.match(path):
                return label
        return UNMATCHED


def route_templates(routes: Iterable[Any], prefix: str = "") -> list[str]:
    """The path templates of Starlette/FastAPI ``routes``, those of included routers (FastAPI
    keeps them as one ``_IncludedRouter`` entry) and mounts too."""
    found = []
    for route in routes:
        router = getattr(route, "original_router", None)
        if router is not None:  # FastAPI's include_router (BentoML's class views)
            found += route_templates(router.routes, prefix)
        elif getattr(route, "routes", None) is not None:  # a Mount
            found += route_templates(route.routes, prefix + getattr(route, "path", ""))
        elif getattr(route, "path", None):
            found.append(prefix + route.path)
    return found


def install(templates: Callable[[], Iterable[str]]) -> None:
    """Make the middleware BentoML builds for each worker label by template (it imports the
    class when a worker builds its app, after the service module is imported). ``templates``
    is read at the first request: BentoML adds the service's FastAPI routes when the worker
    starts it."""
    base = TRAFFIC_METRICS.load()
    if getattr(base, "zoo_templates", None) is not None:  # installed already: new routes
        base.zoo_templates, base.zoo_labels = templates, None
        return

    class TemplateLabelledMetrics(base):  # type: ignore[misc, valid-type]
        zoo_templates: Callable[[], Iterable[str]] | None = templates
        zoo_labels: RouteLabels | None = None

        def __init__(self, app: App, **kwargs: Any) -> None:
            super().__init__(app, **kwargs)
            inner = self.app

            async def real_path(scope: Scope, receive: Any, send: Any) -> None:
                if _REAL_PATH in scope:
                    scope = dict(scope)
                    scope["path"] = scope.pop(_REAL_PATH)
                await inner(scope, receive, send)

            self.app = real_path

        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                cls = type(self)
                if cls.zoo_labels is None:
                    cls.zoo_labels = RouteLabels(cls.zoo_templates())
                scope = {**scope, "path": cls.zoo_labels(scope["path"]),
                         _REAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    TRAFFIC_METRICS.replace(TemplateLabelledMetrics)
