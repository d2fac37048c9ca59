"""What an enrollment keeps so that a later version of the model can embed the person again,
without their photos, and the key that seals it.

- a face model keeps the face's **canonical chip** (``zoo/faces/kept.py``: dlib's template
  at 300 px, padding 1.0, as JPEG q95 with the face's width), from which any later stage
  re-warps its own chip;
- another image model keeps the **decoded image**, its longer side at most 512 px (PNG, or
  JPEG q95 where smaller);
- a tabular model keeps the **row as sent** (JSON, by column name where the model has names).

Everything kept is sealed with AES-GCM (``cryptography``) under the gallery's key, bound to
its family, identity and kind (the associated data), so a row cannot be moved to another
person unnoticed. The key is ``ZOO_GALLERY_KEY`` (32 bytes, base64), or a key file made 0600
beside the gallery on first start (``gallery.key``): back it up, since what is kept cannot
be read without it. The database records a digest of the key per family (never the key), so
a server started with another key stops with a line that says so. Nothing kept is ever
served over HTTP, logged or counted in ``/metrics``; deleting a person deletes it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from serving.errors import RequestError
from serving.settings import ServeSettings
from zoo.data import Preprocessing
from zoo.faces import FaceStage

log = logging.getLogger(__name__)

KINDS = ("chip", "image", "row")
KEY_FILE = "gallery.key"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
MAX_IMAGE_SIDE = 512
JPEG_QUALITY = 95
_CHECK = b"model-zoo gallery key"


class Sealer:
    """AES-GCM under the gallery's key: what is kept, sealed and opened."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != KEY_BYTES:
            raise ValueError(f"a gallery key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.check = hmac.new(key, _CHECK, hashlib.sha256).hexdigest()

    @classmethod
    def load(cls, settings: ServeSettings, folder: Path) -> Sealer:
        """``ZOO_GALLERY_KEY``, or ``folder/gallery.key`` (made 0600 on first start)."""
        if settings.gallery_key:
            return cls(_decoded(settings.gallery_key, "ZOO_GALLERY_KEY"))
        path = Path(folder) / KEY_FILE
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(_decoded(path.read_text().strip(), str(path)))
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
        log.warning("made the gallery's key %s: back it up (what enrollments keep for later "
                    "model versions cannot be read without it), or set ZOO_GALLERY_KEY", path)
        return cls(_decoded(path.read_text().strip(), str(path)))

    def seal(self, family: str, identity: str, kind: str, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, _bound(family, identity, kind))

    def open(self, family: str, identity: str, kind: str, payload: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(payload[:NONCE_BYTES], payload[NONCE_BYTES:],
                                      _bound(family, identity, kind))
        except InvalidTag:
            raise ValueError(f"what was kept of {identity!r} cannot be opened with this key, or "
                             "was altered") from None


def _bound(family: str, identity: str, kind: str) -> bytes:
    """The associated data: a sealed payload opens only for its own row."""
    return json.dumps([family, identity, kind]).encode()


def _decoded(text: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.encode() + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"{where} is not a gallery key: {KEY_BYTES} random bytes in base64 "
                         "(python -c \"import base64, os; print(base64.urlsafe_b64encode("
                         "os.urandom(32)).decode())\")")
    return key


# --- what is kept ----------------------------------------------------------------------------

def keep_image(decoded: Image.Image) -> bytes:
    """A decoded image at most ``MAX_IMAGE_SIDE`` px long, as PNG or JPEG q95, whichever is
    smaller (a kept image, computed while the photo holds its share of the pixel budget)."""
    image = decoded.convert("L" if decoded.mode in ("1", "L", "I", "I;16", "F") else "RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
    encoded = []
    for fmt, options in (("PNG", {"optimize": False}), ("JPEG", {"quality": JPEG_QUALITY})):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        encoded.append(buffer.getvalue())
    return min(encoded, key=len)


def keep_chips(decoded: Image.Image, rgb: np.ndarray, faces: list) -> list[bytes]:
    """Each kept face's canonical chip, as stored (``zoo/faces/kept.py``)."""
    from zoo.faces.kept import canonical_chip, encode, face_width

    return [encode(canonical_chip(rgb, face), face_width(face)) for face in faces]


def keep_row(row: Sequence[Any], pre: Preprocessing) -> bytes:
    """A row as sent, by column name where the model has names (a later version may order
    its columns otherwise)."""
    names = pre.feature_names or []
    return json.dumps(dict(zip(names, row)) if len(names) == len(row) else list(row)).encode()


class Uncarried(Exception):
    """Why a kept entry cannot be embedded by a version: listed, never dropped silently."""


def kept_input(kind: str, data: bytes, pre: Preprocessing, faces: FaceStage | None,
               settings: ServeSettings) -> np.ndarray:
    """What a version's model takes (one row of its input) from one kept entry."""
    from serving.inputs.images import image_array
    from serving.inputs.rows import rows_to_array

    if kind == "row":
        if pre.kind != "tabular":
            raise Uncarried("a row was kept, and this version takes images")
        try:
            return rows_to_array([json.loads(data)], pre, settings)[0]
        except RequestError as exc:
            raise Uncarried(f"this version cannot take the kept row: {exc}") from None
    if pre.kind != "image":
        raise Uncarried(f"an image was kept ({kind}), and this version takes rows")
    if kind == "chip":
        from zoo.faces.kept import decode, rewarp

        chip, width = decode(data)
        picture = Image.fromarray(rewarp(chip, faces, width) if faces is not None else chip)
        return image_array(picture, pre, "a kept chip")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if faces is None:
            return image_array(image, pre, "a kept image")
        from zoo.data.preprocessing import to_channels
        from zoo.faces.detect import align, find_faces

        rgb = np.asarray(to_channels(image, 3))
    found = find_faces(rgb, faces, limit=1)
    if not found:
        raise Uncarried("this version's face stage finds no face in the kept image")
    return image_array(align(rgb, found[0], faces).image(), pre, "a kept image's face")
