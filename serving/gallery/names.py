"""Identity names as the gallery stores them: one normalised form, whoever sends them (an
upload's form, a URL's path, a folder's name)."""
from __future__ import annotations

import unicodedata

from serving.errors import RequestError

MAX_NAME_LENGTH = 200
# Unicode categories refused in identity names: controls (NUL, ESC), format characters
# (bidi overrides, zero-width joiners), surrogates, line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def search_key(text: str) -> str:
    """What ``/identities?search=`` compares: case folded for every script (``ÉMILE`` and
    ``émile`` alike, which SQLite's ``lower`` does for ASCII only), then NFC."""
    return unicodedata.normalize("NFC", text.casefold())


def identity_name(text: str) -> str:
    """An identity name as stored: stripped, NFC-normalised, no control or format
    characters, at most ``MAX_NAME_LENGTH`` characters."""
    name = unicodedata.normalize("NFC", text.strip())
    if not name:
        raise RequestError("identity is empty: name the person (or emitter) enrolled")
    if len(name) > MAX_NAME_LENGTH:
        raise RequestError(f"identity is {len(name)} characters long, over the limit of "
                           f"{MAX_NAME_LENGTH}")
    if name in (".", ".."):
        raise RequestError(f"identity {name!r} is a path segment, which no client can address "
                           "in /identities/<name>: name the person")
    bad = sorted({f"U+{ord(c):04X}" for c in name
                  if unicodedata.category(c) in _REFUSED_CATEGORIES})
    if bad:
        raise RequestError(f"identity contains control or format characters ({', '.join(bad[:5])}"
                           f"{', ...' if len(bad) > 5 else ''}): send plain text")
    return name
