"""The page at ``/ui``: try the model on photos or rows, look at the gallery and the model.

Static files from the package (this folder, ``serving/page/``): plain HTML, CSS and
JavaScript, no build step, no CDN, so the page works offline. It calls the same HTTP API as
any client, with the key a user types (kept in the tab's ``sessionStorage``, sent as
``Authorization: Bearer``), so the server's checks apply unchanged. The files themselves
need no key: the page does nothing without one where keys are set.

Every file is sent with a ``Content-Security-Policy`` that allows scripts and styles from this
server only (no inline script, no ``eval``), images from here and from the page's own
``blob:`` URLs, requests to here only, and no framing.
"""
from __future__ import annotations

import functools
from pathlib import Path

from fastapi import FastAPI, HTTPException
from starlette.responses import RedirectResponse, Response

PAGE_DIR = Path(__file__).parent
#: the page's files, by the name under /ui/ ("" is the page), and their media types: nothing
#: else under serving/page is served, whatever path is asked for
FILES = {"": ("index.html", "text/html; charset=utf-8"),
         "app.js": ("app.js", "text/javascript; charset=utf-8"),
         "app.css": ("app.css", "text/css; charset=utf-8")}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def page_file(name: str) -> Response:
    """One of the page's files, with its security headers; 404 for any other name."""
    if name not in FILES:
        raise HTTPException(404, "no such file on the page; it has: "
                                 f"{', '.join(n for n in FILES if n)}")
    file, media_type = FILES[name]
    return Response(_read(file), media_type=media_type, headers=HEADERS)


@functools.cache
def _read(file: str) -> bytes:
    """A file of the page, read once per worker (they are part of the package)."""
    return (PAGE_DIR / file).read_bytes()


def add_routes(app: FastAPI) -> None:
    """``/ui`` (redirected to ``/ui/``, so the page's relative links work behind a prefix too),
    ``/ui/`` and ``/ui/<file>``."""

    @app.get("/ui", include_in_schema=False)
    def ui_redirect() -> RedirectResponse:
        return RedirectResponse("ui/", status_code=307)

    @app.get("/ui/", include_in_schema=False)
    def ui_page() -> Response:
        return page_file("")

    @app.get("/ui/{name}", include_in_schema=False)
    def ui_file(name: str) -> Response:
        return page_file(name)

