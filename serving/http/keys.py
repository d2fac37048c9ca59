"""Keys on the doors: ``ZOO_API_KEY`` on the model routes, ``ZOO_ADMIN_KEY`` on the gallery.

An ASGI middleware in front of BentoML, so a request without the right key is answered
before its body is read. Keys arrive as ``Authorization: Bearer <key>`` (what the OpenAI
client sends as its ``api_key``) and are compared in constant time (``hmac.compare_digest``).

- Model routes (``/embed``, ``/classify``, ``/identify``, ``/verify``, ``/gradcam``, ``/model``,
  ``/v1/...``) need the API key when one is set (the admin key opens them too); with none
  set they are open.
- Gallery routes (``/enroll``, ``/identities...`` and ``/gallery/...``: its migration) need
  the admin key. With no admin key
  configured they are refused (403), unless ``ZOO_OPEN_ENROLL=true`` opens them, so by
  default nobody can change the gallery.
- The API's description (``/``, ``/docs``, ``/redoc``, ``/openapi.json``, ``/docs.json``,
  ``/schema.json``) needs the API key too, unless ``ZOO_OPEN_DOCS=true``.
- Everything else (``/livez``, ``/readyz``, ``/metrics``, the page at ``/ui``) is open: the
  page does nothing without a key where keys are set.

``/identify`` shows a caller without the admin key only the matches at or above the
threshold, at most ``ZOO_MAX_TOP_K`` of them: the API key lets one identify a face, not list
who is enrolled.

Answers are 401 (no key, or a wrong one; with ``WWW-Authenticate: Bearer``) or 403 (a key
that may not do this), with ``{"error": ...}``, or OpenAI's error shape under ``/v1/``.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from serving.http.asgi import OPENAI_PREFIX, App, Receive, Scope, Send, send_error

MODEL_ROUTES = ("/embed", "/classify", "/identify", "/verify", "/gradcam", "/model")
GALLERY_ROUTES = ("/enroll", "/identities")
#: set on each request's scope: whether its key may list the gallery (``/identify`` shows
#: such a caller the matches below the threshold too)
ADMIN_SCOPE_KEY = "zoo.admin"


#: what describes the API: BentoML's page and schemas, FastAPI's (behind the API key when one
#: is set, unless ZOO_OPEN_DOCS=true)
DOCS_ROUTES = ("/", "/docs.json", "/schema.json", "/docs", "/docs/oauth2-redirect", "/redoc",
               "/openapi.json")


def is_gallery_route(path: str) -> bool:
    return path in GALLERY_ROUTES or path.startswith(("/identities/", "/gallery/"))


def is_model_route(path: str) -> bool:
    return path in MODEL_ROUTES or path.startswith(OPENAI_PREFIX)


@dataclass(frozen=True)
class Keys:
    """The configured keys (empty: none) and whether the gallery is open without one."""

    api: str = ""
    admin: str = ""
    open_enroll: bool = False
    open_docs: bool = False

    def matches(self, token: str | None, key: str) -> bool:
        return bool(key) and token is not None and hmac.compare_digest(
            token.encode(), key.encode())

    def is_admin(self, token: str | None) -> bool:
        """Whether ``token`` may list the gallery: the admin key, or anyone when the gallery
        is open (``ZOO_OPEN_ENROLL=true`` without an admin key)."""
        return self.matches(token, self.admin) if self.admin else self.open_enroll

    def refusal(self, path: str, token: str | None) -> tuple[int, str, str] | None:
        """(status, message, OpenAI error code) when ``token`` may not call ``path``."""
        if is_gallery_route(path):
            if self.admin:
                if self.matches(token, self.admin):
                    return None
                if token is None:
                    return (401, "changing or listing the gallery needs the admin key: send "
                                 "Authorization: Bearer <ZOO_ADMIN_KEY>", "missing_api_key")
                if self.matches(token, self.api):
                    return (403, "this key may use the model but not change or list the "
                                 "gallery: that needs the admin key (ZOO_ADMIN_KEY)",
                            "insufficient_permissions")
                return 401, "invalid admin key", "invalid_api_key"
            if not self.open_enroll:
                return (403, "the gallery is read-only: this server has no admin key; start "
                             "it with ZOO_ADMIN_KEY (or ZOO_OPEN_ENROLL=true to let anyone "
                             "enroll and remove identities)", "gallery_read_only")
        elif not is_model_route(path) and (path not in DOCS_ROUTES or self.open_docs):
            return None
        if not self.api or self.matches(token, self.api) or self.matches(token, self.admin):
            return None
        if token is None:
            return (401, "this server needs an API key: send Authorization: Bearer <key>",
                    "missing_api_key")
        return 401, "invalid API key", "invalid_api_key"


def bearer(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None without one; "" for
    one that holds no bearer token)."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class RequireKeys:
    """ASGI middleware: the routes' keys, checked before the request is read."""

    def __init__(self, app: App, keys: Keys) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            token = bearer(scope)
            scope[ADMIN_SCOPE_KEY] = self.keys.is_admin(token)
            refused = self.keys.refusal(path, token)
            if refused is not None:
                status, message, code = refused
                kind = "authentication_error" if status == 401 else "permission_error"
                headers = ((b"www-authenticate", b"Bearer"),) if status == 401 else ()
                await send_error(send, path, status, message, kind, code, headers)
                return
        await self.app(scope, receive, send)
