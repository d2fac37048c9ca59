"""Every private name of BentoML (and of the uvicorn under it) that the server patches or
reads, in one list.

BentoML 1.4 has no public hook for five things the server must change (each module's
docstring says why):

- ``route_metrics``: the request metrics, labelled by route template instead of raw path;
- ``latency``: the per-request timer of the timeout middleware, cancelled when answered;
- ``multipart``: the form reader, which must not fetch URLs or parse text as JSON;
- ``request_logs``: the logger of a refused request, which must not log its body, nor a
  traceback for a client that hung up;
- ``connections``: uvicorn's HTTP protocol, which must time out slow clients.

They reach BentoML only through :data:`NAMES` here. An upgrade that moves one fails at the
server's start (and in ``tests/test_serving_parts.py``) with a line that names the module,
the attribute and which of ours needs it, instead of an ``AttributeError`` deep in a worker.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


class BentoMLChanged(RuntimeError):
    """A private BentoML name the server needs is gone: pin the BentoML the server was
    written for (pyproject.toml), or port the patch."""


@dataclass(frozen=True)
class PrivateName:
    """``module.attribute`` in BentoML's private code, and which module of ours uses it."""

    module: str
    attribute: str
    used_by: str

    def load(self) -> Any:
        try:
            return getattr(importlib.import_module(self.module), self.attribute)
        except (ImportError, AttributeError):
            import bentoml

            raise BentoMLChanged(
                f"BentoML {bentoml.__version__} has no {self.module}.{self.attribute}, which "
                f"serving/http/{self.used_by}.py patches: install the BentoML pinned in "
                "pyproject.toml, or port that patch") from None

    def replace(self, value: Any) -> None:
        """Put ``value`` where BentoML looks up this name."""
        self.load()
        setattr(importlib.import_module(self.module), self.attribute, value)


#: the metrics middleware BentoML builds for each worker (looked up when the app is built)
TRAFFIC_METRICS = PrivateName("bentoml._internal.server.http.instruments",
                              "RunnerTrafficMetricsMiddleware", "route_metrics")
#: the timeout middleware, whose ``__call__`` is replaced, and the method it calls
TIMEOUT_MIDDLEWARE = PrivateName("bentoml._internal.server.http.traffic", "TimeoutMiddleware",
                                 "latency")
#: BentoML's table of body readers by media type, and the multipart reader in it
BODY_READERS = PrivateName("_bentoml_impl.serde", "ALL_SERDE", "multipart")
MULTIPART_READER = PrivateName("_bentoml_impl.serde", "MultipartSerde", "multipart")
#: how BentoML's reader tells a list-of-files field from a single file
IS_LIST_TYPE = PrivateName("_bentoml_sdk.typing_utils", "is_list_type", "multipart")
IS_UNION_TYPE = PrivateName("_bentoml_sdk.typing_utils", "is_union_type", "multipart")
#: the function that logs a refused request, whose logger ``request_logs`` filters
LOG_EXCEPTION = PrivateName("bentoml._internal.server.http_app", "log_exception",
                            "request_logs")
#: uvicorn's table of HTTP protocols by name (BentoML's workers use ``auto``), and the
#: httptools protocol ``auto`` stands for
HTTP_PROTOCOLS = PrivateName("uvicorn.config", "HTTP_PROTOCOLS", "connections")
HTTPTOOLS_PROTOCOL = PrivateName("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol",
                                 "connections")

NAMES = (TRAFFIC_METRICS, TIMEOUT_MIDDLEWARE, BODY_READERS, MULTIPART_READER, IS_LIST_TYPE,
         IS_UNION_TYPE, LOG_EXCEPTION, HTTP_PROTOCOLS, HTTPTOOLS_PROTOCOL)


def check_all() -> None:
    """Every name present, or :class:`BentoMLChanged` for the first that is not."""
    for name in NAMES:
        name.load()
